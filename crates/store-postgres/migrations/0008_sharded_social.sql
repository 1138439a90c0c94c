-- The social graph and the feed of a sharded store (ShardedStore), on every
-- replica set: the joins of the unsharded store (follows ⋈ photos) cannot
-- cross databases, so they are denormalised.
--
-- `following`: the follows a user made, on the follower's shard; `celebrity`
-- marks a followee whose photos are merged into this follower's feed at
-- read time instead of fanned out. `followers`: the same edge on the
-- followee's shard, read by the fan-out. `feed_entries`: one row per
-- follower and photo, written on the follower's shard when the photo is
-- ready. The users row keeps its counters (written in the same statement
-- as the edge, so they are exact) and its celebrity state: 0 none, 1
-- promoting (fan-out stopped, followers' rows being marked), 2 done.
CREATE TABLE following (
    follower_id BIGINT  NOT NULL REFERENCES users (id),
    followee_id BIGINT  NOT NULL,
    celebrity   BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX following_by_followee ON following (followee_id);

CREATE TABLE followers (
    followee_id BIGINT NOT NULL REFERENCES users (id),
    follower_id BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (followee_id, follower_id)
);

CREATE TABLE feed_entries (
    user_id   BIGINT NOT NULL,
    photo_id  BIGINT NOT NULL,
    author_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, photo_id)
);
CREATE INDEX feed_entries_by_photo ON feed_entries (photo_id);

ALTER TABLE users
    ADD COLUMN followers_count BIGINT   NOT NULL DEFAULT 0,
    ADD COLUMN following_count BIGINT   NOT NULL DEFAULT 0,
    ADD COLUMN celebrity       SMALLINT NOT NULL DEFAULT 0 CHECK (celebrity IN (0, 1, 2));

-- A session's user lives on its own shard, the sessions table on the
-- catalog set: the reference cannot be checked across databases (users are
-- never deleted, so it guarded nothing).
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_user_id_fkey;
