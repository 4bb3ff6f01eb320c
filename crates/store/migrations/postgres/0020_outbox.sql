-- The outbox: everything that leaves Shoal (webhook events now; audit records and usage events
-- can join them) is a row here, written in the transaction of the state change it reports.
-- `seq` orders the rows for cursor readers. Postgres hands out `seq` at insert, not at commit,
-- so a reader takes only rows whose transaction (`txid`) is older than every transaction still
-- running: a row with a lower `seq` can then no longer appear behind the cursor.
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    topic       TEXT NOT NULL,
    tenant      TEXT,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    txid        BIGINT NOT NULL DEFAULT txid_current()
);
CREATE INDEX outbox_topic ON outbox(topic, seq);

-- Where webhook events go. `owner` is the tenant whose key created the endpoint (NULL: the
-- platform's, created with the admin token); `tenant` filters events to one tenant (NULL: all);
-- `events` is NULL for every type or a list like ',job.failed,job.dead,'; `guarded` endpoints
-- (created with a tenant key) are refused private addresses at delivery too.
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    owner       TEXT,
    tenant      TEXT,
    url         TEXT NOT NULL,
    events      TEXT,
    secret      TEXT NOT NULL,
    guarded     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints(owner);

-- One row per event and destination, made in the event's transaction. A delivery is leased as a
-- job is (`FOR UPDATE SKIP LOCKED`): `next_attempt_at` is when it is next due, and a lease moves
-- it to the lease's expiry, so a replica that dies mid-attempt leaves a row that falls due again
-- by itself.
CREATE TABLE outbox_deliveries (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          TEXT NOT NULL,
    destination       TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT,
    lease_id          TEXT,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    last_status       BIGINT,
    last_error        TEXT,
    last_attempt_at   BIGINT,
    created_at        BIGINT NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (event_id, destination)
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries(next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_deliveries_destination ON outbox_deliveries(destination, seq);

-- The quota signals are sent once per period, like the warning before them.
ALTER TABLE tenants ADD COLUMN quota_exceeded_at BIGINT;
