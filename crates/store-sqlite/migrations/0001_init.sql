-- Times are milliseconds since the Unix epoch (BIGINT), so the same schema
-- carries over to PostgreSQL unchanged but for the id columns.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE photos (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id   BIGINT  NOT NULL REFERENCES users (id),
    caption    TEXT,
    status     TEXT    NOT NULL CHECK (status IN ('processing', 'ready', 'failed')),
    format     TEXT    NOT NULL CHECK (format IN ('jpeg', 'png', 'webp')),
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX photos_by_owner ON photos (owner_id, id DESC);

CREATE TABLE follows (
    follower_id BIGINT NOT NULL REFERENCES users (id),
    followee_id BIGINT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_by_followee ON follows (followee_id);

-- Only a SHA-256 of each token is stored: a copy of this table logs no one in.
CREATE TABLE sessions (
    token_hash TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- state: queued (waiting or backing off until run_at), running (claimed until
-- locked_until), dead (retry budget spent). Acknowledged jobs are deleted.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       BIGINT  NOT NULL,
    locked_until BIGINT,
    last_error   TEXT,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, run_at);
