-- The audit log: records arrive as `audit` rows of the outbox, written in the transaction of the
-- change they report; the sealer moves them here in outbox order, giving each the next `seq` and
-- the SHA-256 chain (`prev_hash`, `hash`), and deletes the outbox row in the same transaction.
-- `outbox_seq` is unique, so a record can never be sealed twice.
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    outbox_seq   BIGINT NOT NULL UNIQUE,
    at           BIGINT NOT NULL,
    actor_kind   TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

-- Retention deletes finished jobs, events and spent deliveries by age.
-- (Postgres already has jobs_finished_at from 0001.)
CREATE INDEX events_at ON events(at);
CREATE INDEX outbox_created ON outbox(created_at);
