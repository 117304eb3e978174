-- The outbox's ordered key/value store (outbox/kv): one row per key of
-- each bucket, compared as unsigned bytes like bbolt's keys.
CREATE TABLE kv (
    bucket bytea NOT NULL,
    key    bytea NOT NULL,
    value  bytea NOT NULL,
    PRIMARY KEY (bucket, key)
);

-- Each bucket's NextSequence counter.
CREATE TABLE kv_sequences (
    bucket bytea PRIMARY KEY,
    n      bigint NOT NULL
);
