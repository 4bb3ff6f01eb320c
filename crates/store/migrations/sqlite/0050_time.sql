-- Time: delayed jobs, retries with backoff, attempt histories and cron schedules.

-- Not leased before this time (`run_at` / `delay_s` on admission, or a schedule's fire time).
ALTER TABLE jobs ADD COLUMN run_at INTEGER;
-- After an attempt that will be tried again: not leased before this time (the backoff).
ALTER TABLE jobs ADD COLUMN next_attempt_at INTEGER;
-- The retry policy without `max_attempts` (which is its own column): `{"on", "initial_backoff_s",
-- "max_backoff_s"}`; NULL for jobs admitted before retry policies (they retry when lost, at once).
ALTER TABLE jobs ADD COLUMN retry TEXT;
-- One entry per attempt that ended: `[{"attempt", "started_at", "finished_at", "outcome", "error"?}]`.
ALTER TABLE jobs ADD COLUMN attempt_history TEXT NOT NULL DEFAULT '[]';
-- The schedule that made the job (`TENANT/NAME`), if any.
ALTER TABLE jobs ADD COLUMN schedule TEXT;
-- Queued jobs by when they fall due, for the planner and the lease long poll.
CREATE INDEX jobs_due ON jobs(state, tenant, run_at, next_attempt_at);

-- Cron schedules: each fire time makes one job whose idempotency key is the schedule and the
-- fire time, inserted in the transaction that advances `next_fire_at`.
CREATE TABLE schedules (
    tenant        TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    job           TEXT NOT NULL,
    next_fire_at  INTEGER,
    last_fire_at  INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX schedules_due ON schedules(next_fire_at);
