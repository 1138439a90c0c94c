-- The global username lookup of a sharded store: which user id (and so
-- which logical shard) a name belongs to. It lives on the catalog replica
-- set, so it fails over with that set. A sign-up claims the name first,
-- creates the user on its shard, then activates the claim; a claim whose
-- sign-up died midway is taken over once it is stale.
CREATE TABLE usernames (
    username   TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL UNIQUE,
    state      TEXT   NOT NULL CHECK (state IN ('claimed', 'active')),
    claimed_at BIGINT NOT NULL
);
