-- ivkit manifest, schema version 1: the corpus core.
-- Every fact about every video and clip lives here; shards are materialized views of it.

CREATE TABLE meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR
);

-- One row per (source, source_id-or-uri). The same bytes under two sources are two rows with one sha256:
-- exact dedup works on sha256 / source_id, provenance stays per source.
CREATE TABLE videos (
    video_id      VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,
    source_id     VARCHAR,
    uri           VARCHAR NOT NULL,      -- where it came from (path or URL)
    path          VARCHAR,               -- local file the stages read (= uri for local files)
    sha256        VARCHAR,
    bytes         BIGINT,
    label         VARCHAR,               -- kept as metadata; label-free stages ignore it
    split         VARCHAR,               -- train / val / test as given by the source, if any
    extra         JSON,                  -- per-row metadata from the source list
    ingested_at   TIMESTAMP,
    -- probe facts (NULL until probed)
    duration_s    DOUBLE,
    fps           DOUBLE,
    num_frames    BIGINT,
    width         INTEGER,
    height        INTEGER,
    rotation      INTEGER,
    vcodec        VARCHAR,
    acodec        VARCHAR,
    has_video     BOOLEAN,
    has_audio     BOOLEAN,
    audio_rate    INTEGER,
    container     VARCHAR,
    status        VARCHAR NOT NULL,      -- ingested | downloading | probed | failed
    error         VARCHAR,               -- reason, when status = failed
    failed_stage  VARCHAR
);
CREATE INDEX videos_sha ON videos(sha256);

-- Spans given by a source list (e.g. Kinetics time_start/time_end); split method 'spans' uses them.
CREATE TABLE spans (
    video_id  VARCHAR NOT NULL,
    start_s   DOUBLE NOT NULL,
    end_s     DOUBLE NOT NULL,
    label     VARCHAR,
    PRIMARY KEY (video_id, start_s, end_s)
);

-- Which videos a split run has handled (so a video that yields zero clips is not re-split forever).
CREATE TABLE splits (
    video_id      VARCHAR PRIMARY KEY,
    method        VARCHAR NOT NULL,
    nshots        INTEGER,
    nclips        INTEGER,
    status        VARCHAR NOT NULL,      -- ok | failed
    error         VARCHAR
);

CREATE TABLE clips (
    clip_id       VARCHAR PRIMARY KEY,   -- {video_id}_{start_ms}_{end_ms}: stable, no dots, no slashes
    video_id      VARCHAR NOT NULL,
    start_s       DOUBLE NOT NULL,       -- requested span in the source video
    end_s         DOUBLE NOT NULL,
    split_method  VARCHAR NOT NULL,
    -- cut results (NULL until cut)
    cut_mode      VARCHAR,               -- copy | reencode
    cut_start_s   DOUBLE,                -- actual span (copy mode snaps to keyframes)
    cut_end_s     DOUBLE,
    path          VARCHAR,               -- mp4 in the clip store
    audio_path    VARCHAR,               -- 16 kHz mono flac, when the clip has audio
    sha256        VARCHAR,
    bytes         BIGINT,
    duration_s    DOUBLE,
    num_frames    INTEGER,
    fps           DOUBLE,
    width         INTEGER,
    height        INTEGER,
    has_audio     BOOLEAN,
    status        VARCHAR NOT NULL,      -- pending | ok | failed
    error         VARCHAR
);
CREATE INDEX clips_video ON clips(video_id);

CREATE TABLE captions (
    clip_id      VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,       -- V, A, S, AV, AVS, ...
    text         VARCHAR,
    lang         VARCHAR,
    model        VARCHAR NOT NULL,
    prompt_hash  VARCHAR NOT NULL,
    extra        JSON,
    created_at   TIMESTAMP,
    PRIMARY KEY (clip_id, kind, model, prompt_hash)
);

CREATE TABLE scores (
    clip_id  VARCHAR NOT NULL,
    metric   VARCHAR NOT NULL,
    value    DOUBLE,
    model    VARCHAR NOT NULL DEFAULT '',
    PRIMARY KEY (clip_id, metric, model)
);

CREATE TABLE dedup (
    clip_id          VARCHAR NOT NULL,
    method           VARCHAR NOT NULL,
    cluster_id       VARCHAR,
    kept             BOOLEAN NOT NULL,
    matched_clip_id  VARCHAR,
    similarity       DOUBLE,
    PRIMARY KEY (clip_id, method)
);

CREATE TABLE subsets (
    name        VARCHAR NOT NULL,
    clip_id     VARCHAR NOT NULL,
    PRIMARY KEY (name, clip_id)
);
CREATE TABLE subset_defs (
    name        VARCHAR PRIMARY KEY,
    query       VARCHAR NOT NULL,
    nclips      BIGINT,
    created_at  TIMESTAMP
);

CREATE TABLE shards (
    shardset    VARCHAR NOT NULL,
    shard_index INTEGER NOT NULL,
    path        VARCHAR NOT NULL,        -- relative to the corpus shards dir
    sha256      VARCHAR NOT NULL,
    md5         VARCHAR NOT NULL,        -- wids' index field
    nsamples    INTEGER NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  TIMESTAMP,
    PRIMARY KEY (shardset, shard_index)
);

CREATE TABLE samples (
    shardset     VARCHAR NOT NULL,
    key          VARCHAR NOT NULL,       -- = clip_id
    shard_index  INTEGER NOT NULL,
    members      VARCHAR[] NOT NULL,     -- member names in the tar, in order
    sha256       VARCHAR NOT NULL,       -- sha256 over the sample's member bytes, in member order
    PRIMARY KEY (shardset, key)
);

CREATE SEQUENCE runs_seq;
CREATE TABLE runs (
    run_id    BIGINT PRIMARY KEY DEFAULT nextval('runs_seq'),
    stage     VARCHAR NOT NULL,
    config    JSON,
    started   TIMESTAMP,
    finished  TIMESTAMP,
    status    VARCHAR,                   -- running | ok | failed | interrupted
    counts    JSON
);

-- Everything a subset query usually wants about a clip, in one place.
CREATE VIEW clip_info AS
SELECT c.*, v.source, v.source_id, v.uri, v.label, v.split, v.sha256 AS video_sha256,
       v.duration_s AS video_duration_s, v.width AS video_width, v.height AS video_height,
       v.vcodec, v.acodec
FROM clips c JOIN videos v USING (video_id);
