-- The shared warm pool: blank sandboxes that belong to no tenant yet. A claim moves one, in one
-- transaction, into `sandboxes` under the claiming tenant (same id, same token hash) and deletes
-- it here, so a blank is claimed once and a claimed sandbox never comes back.
CREATE TABLE blank_sandboxes (
    id            TEXT PRIMARY KEY,
    -- booting (asked of the provider), ready (running, its agent waiting for a claim) or
    -- stopped (kept stopped by a provider that wakes it at the claim).
    state         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    provider_id   TEXT,
    region        TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    cpus_milli    BIGINT NOT NULL,
    memory_mb     BIGINT NOT NULL,
    since         BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
