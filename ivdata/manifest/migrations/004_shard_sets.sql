-- ivkit manifest, schema version 3: the subset each shard set is made from.
-- A shard set holds exactly its subset: `iv data shard` rewrites the shards that hold clips the subset has
-- lost, and `iv data verify` reports any sample that is not in it.
CREATE TABLE shard_sets (
    shardset    VARCHAR PRIMARY KEY,
    subset      VARCHAR NOT NULL,        -- 'all' (every good clip) or a name in subset_defs
    updated_at  TIMESTAMP
);

-- Shard sets written before this version: the subset that their latest shard run named.
INSERT INTO shard_sets
SELECT coalesce(config->>'$.cfg.shardset', config->>'$.cfg.subset') AS shardset,
       arg_max(config->>'$.cfg.subset', run_id), max(started)
FROM runs WHERE stage = 'shard' AND config->>'$.cfg.subset' IS NOT NULL
GROUP BY 1 HAVING shardset IN (SELECT shardset FROM shards);
