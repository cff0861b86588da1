-- ivkit manifest, schema version 5: images beside videos, captions that come with source lists,
-- instruction data, and the layout each shard set is written with.

-- What a media item is. An image is a row of `videos` (its source and provenance) and one row of `clips`
-- (the sample: clip_id = video_id, span 0-0, one frame), so one SQL query, one subset and one dedup run
-- span videos, their clips and images alike.
ALTER TABLE videos ADD COLUMN IF NOT EXISTS media VARCHAR DEFAULT 'video';   -- video | image
ALTER TABLE clips ADD COLUMN IF NOT EXISTS media VARCHAR DEFAULT 'video';    -- video | image

-- Captions a source list gave (WebVid `name`, InternVid `Caption`, img2dataset `caption`, sidecar .txt):
-- about the whole media (span 'whole') or a span of it. They reach `captions` (prompt_hash '') for every
-- clip of the media, or for the clip whose span is the listed one, as soon as that clip exists.
CREATE TABLE IF NOT EXISTS source_captions (
    video_id    VARCHAR NOT NULL,
    span        VARCHAR NOT NULL,        -- 'whole' or '<start_ms>-<end_ms>'
    start_s     DOUBLE,                  -- NULL for the whole media
    end_s       DOUBLE,
    kind        VARCHAR NOT NULL,        -- 'web' unless the list says otherwise
    model       VARCHAR NOT NULL,        -- who wrote it: the source (webvid, internvid, ...)
    text        VARCHAR,                 -- NULL when the list row had no caption (error says so)
    error       VARCHAR,
    extra       JSON,                    -- provenance: list file and line, the row's other fields
    created_at  TIMESTAMP,
    PRIMARY KEY (video_id, span, kind, model)
);

-- Instruction data (LLaVA / VideoChat2-IT style): one row per conversation, linked to the media it names.
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id  VARCHAR PRIMARY KEY,  -- c + 16 hex, from (dataset, entry index, entry): stable on re-import
    dataset          VARCHAR NOT NULL,
    task             VARCHAR,
    format           VARCHAR NOT NULL,     -- llava | videochat2
    source_file      VARCHAR NOT NULL,
    entry_index      BIGINT NOT NULL,      -- position in the file (0-based)
    entry_id         VARCHAR,              -- the entry's own id, when it has one
    media            VARCHAR,              -- video | image (as the entry names it)
    media_path       VARCHAR,              -- the entry's media path (relative to --media-root)
    video_id         VARCHAR,              -- the media item it names
    start_s          DOUBLE,               -- the span of a video it is about; NULL: the whole video
    end_s            DOUBLE,
    clip_id          VARCHAR,              -- the sample it is linked to, once that clip exists
    turns            JSON,                 -- [{"from": "system"|"human"|"gpt", "value": str}, ...]
    nturns           INTEGER,
    status           VARCHAR NOT NULL,     -- ok | failed
    error            VARCHAR,
    imported_at      TIMESTAMP
);
CREATE INDEX IF NOT EXISTS conversations_clip ON conversations(clip_id);

-- The members and json keys a shard set is written with (unit, caption kinds and pins, txt kinds, flac,
-- score metrics, labels): every sample of a set has the same ones, and a run that would change them
-- rewrites the set.
ALTER TABLE shard_sets ADD COLUMN IF NOT EXISTS layout JSON;

-- clip_info again, so that it lists the clips' new column
DROP VIEW IF EXISTS clip_info;
CREATE VIEW clip_info AS
SELECT c.*, v.source, v.source_id, v.uri, v.label, v.split, v.sha256 AS video_sha256,
       v.duration_s AS video_duration_s, v.width AS video_width, v.height AS video_height,
       v.vcodec, v.acodec
FROM clips c JOIN videos v USING (video_id);

-- The layout each shard was written with (a hash of shard_sets.layout): a shard of another layout is stale.
ALTER TABLE shards ADD COLUMN IF NOT EXISTS layout_hash VARCHAR;
