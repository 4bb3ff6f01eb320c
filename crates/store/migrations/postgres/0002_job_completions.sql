-- Append-only audit of every completion the store accepted: one row per job if leases fence
-- stale completions as they must (the fault tests count them).
CREATE TABLE job_completions (
    seq       BIGSERIAL PRIMARY KEY,
    job_id    TEXT NOT NULL,
    lease_id  TEXT NOT NULL,
    state     TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX job_completions_job ON job_completions(job_id);
