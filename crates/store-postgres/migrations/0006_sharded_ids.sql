-- Ids with their logical shard inside (domain::shard::ShardedId, as
-- Instagram made them in PL/pgSQL): 40 bits of milliseconds since
-- 2026-01-01, 13 bits of logical shard, 10 bits of sequence. The sequence is
-- this database's, shared by every logical shard it holds: 1024 ids per
-- millisecond per replica set before one repeats (a primary key refuses
-- it, and the insert is retried).
CREATE SEQUENCE scalestack_id_seq;

CREATE FUNCTION scalestack_next_id(shard integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ms  bigint := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1767225600000;
    seq bigint := nextval('scalestack_id_seq') % 1024;
BEGIN
    IF shard IS NULL OR shard < 0 OR shard > 8191 THEN
        RAISE EXCEPTION 'logical shard % is not in 0..8191', shard;
    END IF;
    IF ms < 0 OR ms >= (1::bigint << 40) THEN
        RAISE EXCEPTION 'the clock (% ms past the ids'' epoch) is outside their 34.8 years', ms;
    END IF;
    RETURN (ms << 23) | (shard::bigint << 10) | seq;
END
$$;
