-- The outbox: everything that leaves Shoal (webhook events now; audit records and usage events
-- can join them) is a row here, written in the transaction of the state change it reports.
-- `seq` orders the rows for cursor readers; SQLite commits one writer at a time, so a reader
-- never sees a later `seq` before an earlier one commits.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    topic       TEXT NOT NULL,
    tenant      TEXT,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
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
    guarded     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints(owner);

-- One row per event and destination, made in the event's transaction. A delivery is leased as a
-- job is: `next_attempt_at` is when it is next due, and a lease moves it to the lease's expiry,
-- so a replica that dies mid-attempt leaves a row that falls due again by itself.
CREATE TABLE outbox_deliveries (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT NOT NULL,
    destination       TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    lease_id          TEXT,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    last_status       INTEGER,
    last_error        TEXT,
    last_attempt_at   INTEGER,
    created_at        INTEGER NOT NULL,
    delivered_at      INTEGER,
    UNIQUE (event_id, destination)
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries(next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_deliveries_destination ON outbox_deliveries(destination, seq);

-- The quota signals are sent once per period, like the warning before them.
ALTER TABLE tenants ADD COLUMN quota_exceeded_at INTEGER;
