-- The shard map, one row per epoch (a JSON domain::shard::ShardMap): the
-- catalog replica set's primary holds the durable copy every router
-- follows; every other database simply has the table empty.
CREATE TABLE shard_maps (
    epoch      BIGINT PRIMARY KEY CHECK (epoch > 0),
    map        TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
