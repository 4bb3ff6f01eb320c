-- Shoal's schema on Postgres: the same tables and meanings as the SQLite schema. Times are
-- BIGINT milliseconds since the Unix epoch (UTC). JSON documents (specs, results, errors, event
-- details) are stored as TEXT holding serialized JSON, not JSONB: JSONB refuses the \u0000 escape,
-- which a job's captured output may well contain, and the store never queries inside them.

CREATE TABLE tenants (
    id                 TEXT PRIMARY KEY,
    plan               TEXT NOT NULL,
    overrides          TEXT NOT NULL DEFAULT '{}',
    draining           BOOLEAN NOT NULL DEFAULT FALSE,
    quota_warned_at    BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(id),
    created_at  BIGINT NOT NULL
);

-- Jobs accepted per tenant per month: the quota counter. Admission locks this row, so concurrent
-- admissions of one tenant queue on it and the quota cannot be overrun by a race.
CREATE TABLE tenant_periods (
    tenant        TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    jobs          BIGINT NOT NULL,
    PRIMARY KEY (tenant, period_start)
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL REFERENCES tenants(id),
    kind              TEXT NOT NULL,
    spec              TEXT NOT NULL,
    idempotency_key   TEXT,
    priority          INTEGER NOT NULL DEFAULT 0,
    max_attempts      BIGINT NOT NULL,
    timeout_s         BIGINT NOT NULL,
    state             TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    sandbox_id        TEXT,
    lease_id          TEXT,
    lease_expires_at  BIGINT,
    result            TEXT,
    error             TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    -- Order of admission, from a sequence: unique and increasing, the list's cursor.
    seq               BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The dispatcher's order: this tenant's queued jobs by priority, then age.
CREATE INDEX jobs_dispatch ON jobs(tenant, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX jobs_state ON jobs(state, tenant);
CREATE INDEX jobs_lease ON jobs(lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs(tenant, finished_at);
CREATE INDEX jobs_finished_at ON jobs(finished_at);
CREATE INDEX jobs_sandbox ON jobs(sandbox_id, state);
CREATE INDEX jobs_tenant_seq ON jobs(tenant, seq);

CREATE TABLE sandboxes (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants(id),
    state         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    provider_id   TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    cpus_milli    BIGINT NOT NULL,
    memory_mb     BIGINT NOT NULL,
    since         BIGINT NOT NULL,
    idle_since    BIGINT,
    last_seen     BIGINT,
    jobs_run      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);
CREATE INDEX sandboxes_tenant ON sandboxes(tenant, state);

-- Append-only: billable transitions as the provider reported them.
CREATE TABLE ledger (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sandbox_id   TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    cpus_milli   BIGINT,
    memory_mb    BIGINT
);
CREATE INDEX ledger_tenant ON ledger(tenant, seq);

-- What happened, for operators: scaling actions, quota warnings, sandboxes lost.
CREATE TABLE events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant   TEXT,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX events_tenant ON events(tenant, seq);
