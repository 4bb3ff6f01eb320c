-- Append-only audit of every completion the store accepted: one row per job if leases fence
-- stale completions as they must (the fault tests count them).
CREATE TABLE job_completions (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT NOT NULL,
    lease_id  TEXT NOT NULL,
    state     TEXT NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX job_completions_job ON job_completions(job_id);
