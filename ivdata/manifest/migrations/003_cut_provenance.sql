-- ivkit manifest, schema version 3: what a cut can check its inputs and its settings against.

-- The source file's mtime at ingest (with videos.bytes and sha256): cut notices a file replaced after
-- ingest from its size and mtime, and hashes it again only when those moved.
ALTER TABLE videos ADD COLUMN mtime_ns BIGINT;

-- The cut settings that made each clip (JSON: mode, and for reencode short_side, fps, crf, preset,
-- x264_params; flac): a later cut with other settings is refused rather than mixed in silently.
ALTER TABLE clips ADD COLUMN cut_options JSON;
