-- Where the load is (`ctl shards`): every process that routes by the shard
-- map reports, with its heartbeat, the requests it routed per set and its
-- busiest logical shards and users (see `sharded/load.rs`). Only on the
-- catalog set, like the rest of `shard_map_clients`.
ALTER TABLE shard_map_clients ADD COLUMN load JSONB;
