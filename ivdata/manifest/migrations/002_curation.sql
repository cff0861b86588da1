-- ivkit manifest, schema version 2: curation audit trail.

-- One row per (training clip, evidence) that ties a training clip to an evaluation split. The clip is
-- also marked in `dedup` (method 'leakage', kept = false) so every selection drops it; this table says why.
CREATE TABLE leakage (
    clip_id         VARCHAR NOT NULL,    -- the training clip that is removed
    method          VARCHAR NOT NULL,    -- source_id | near_dup
    eval_source     VARCHAR NOT NULL,    -- k400, ssv2, ... (the dataset whose eval split it matches)
    eval_split      VARCHAR NOT NULL,    -- val | test
    eval_source_id  VARCHAR NOT NULL,    -- the eval video's dataset id (YouTube id, SSv2 id, ...)
    eval_clip_id    VARCHAR NOT NULL DEFAULT '',  -- the matching eval clip when it is in this manifest
    similarity      DOUBLE,              -- cosine similarity for near_dup matches
    evidence        VARCHAR,             -- annotation file:line, or 'manifest'
    run_id          BIGINT,
    PRIMARY KEY (clip_id, method, eval_source, eval_split, eval_source_id, eval_clip_id)
);

-- Clip embeddings live beside the manifest in .npy parts (too big for the DuckDB file); this is the pointer.
CREATE TABLE embeddings (
    clip_id     VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,        -- backend name + model id, e.g. thumb-16 or clip:/models/clip-vit-b16
    file        VARCHAR NOT NULL,        -- path relative to the corpus root
    row_index   BIGINT NOT NULL,
    dim         INTEGER NOT NULL,
    created_at  TIMESTAMP,
    PRIMARY KEY (clip_id, model)
);
