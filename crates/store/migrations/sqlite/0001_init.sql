-- Shoal's schema on SQLite. Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE tenants (
    id                 TEXT PRIMARY KEY,
    plan               TEXT NOT NULL,
    overrides          TEXT NOT NULL DEFAULT '{}',
    draining           INTEGER NOT NULL DEFAULT 0,
    quota_warned_at    INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(id),
    created_at  INTEGER NOT NULL
);

-- Jobs accepted per tenant per month: the quota counter, bumped in the insert's transaction.
CREATE TABLE tenant_periods (
    tenant        TEXT NOT NULL,
    period_start  INTEGER NOT NULL,
    jobs          INTEGER NOT NULL,
    PRIMARY KEY (tenant, period_start)
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL REFERENCES tenants(id),
    kind              TEXT NOT NULL,
    spec              TEXT NOT NULL,
    idempotency_key   TEXT,
    priority          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    timeout_s         INTEGER NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    sandbox_id        TEXT,
    lease_id          TEXT,
    lease_expires_at  INTEGER,
    result            TEXT,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    seq               INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The dispatcher's order: this tenant's queued jobs by priority, then age.
CREATE INDEX jobs_dispatch ON jobs(tenant, state, priority DESC, seq);
CREATE INDEX jobs_state ON jobs(state, tenant);
CREATE INDEX jobs_lease ON jobs(state, lease_expires_at);
CREATE INDEX jobs_finished ON jobs(tenant, finished_at);
CREATE INDEX jobs_sandbox ON jobs(sandbox_id, state);

CREATE TABLE sandboxes (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants(id),
    state         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    provider_id   TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    cpus_milli    INTEGER NOT NULL,
    memory_mb     INTEGER NOT NULL,
    since         INTEGER NOT NULL,
    idle_since    INTEGER,
    last_seen     INTEGER,
    jobs_run      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);
CREATE INDEX sandboxes_tenant ON sandboxes(tenant, state);

-- Append-only: billable transitions as the provider reported them.
CREATE TABLE ledger (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id   TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    cpus_milli   INTEGER,
    memory_mb    INTEGER
);
CREATE INDEX ledger_tenant ON ledger(tenant, seq);

-- What happened, for operators: scaling actions, quota warnings, sandboxes lost.
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant   TEXT,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX events_tenant ON events(tenant, seq);
