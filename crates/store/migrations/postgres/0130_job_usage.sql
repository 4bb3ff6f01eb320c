-- What each job attempt used, as its agent reported it (checked and cut to what is possible):
-- the samples right-sizing recommends a tenant's sandbox size from. Bounded per tenant: the
-- newest 1000 attempts of the last 30 days are kept, older rows are pruned as new ones come.
CREATE TABLE job_usage (
    job_id           TEXT    NOT NULL,
    attempt          BIGINT  NOT NULL,
    tenant           TEXT    NOT NULL,
    at               BIGINT  NOT NULL,
    peak_memory_kib  BIGINT  NOT NULL,
    cpu_ms           BIGINT  NOT NULL,
    wall_ms          BIGINT  NOT NULL,
    oom_killed       BOOLEAN NOT NULL DEFAULT FALSE,
    memory_mb        BIGINT  NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX job_usage_tenant_at ON job_usage (tenant, at);

-- The size `limits.auto_size` gave a tenant's new sandboxes, once the control loop applied a
-- recommendation; a tenant without a row gets its `sandbox_size`.
CREATE TABLE tenant_auto_sizes (
    tenant      TEXT    PRIMARY KEY,
    cpus_milli  BIGINT  NOT NULL,
    memory_mb   BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
