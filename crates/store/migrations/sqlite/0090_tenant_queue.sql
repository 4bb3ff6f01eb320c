-- Queued and running jobs per tenant, kept by triggers in the transaction of every change of a
-- job's state, so the control loop's snapshot reads one row per tenant instead of counting the
-- backlog. The delayed jobs (a start time or a retry's backoff) are the only ones the snapshot
-- still reads from `jobs`, through `jobs_delayed`, which holds nothing else.
CREATE TABLE tenant_queue (
    tenant  TEXT PRIMARY KEY,
    queued  INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0
);

INSERT INTO tenant_queue (tenant, queued, running)
SELECT tenant, SUM(state = 'queued'), SUM(state = 'running')
FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant;

CREATE TRIGGER jobs_queue_insert AFTER INSERT ON jobs
WHEN NEW.state IN ('queued', 'running')
BEGIN
    INSERT OR IGNORE INTO tenant_queue (tenant) VALUES (NEW.tenant);
    UPDATE tenant_queue SET queued = queued + (NEW.state = 'queued'),
        running = running + (NEW.state = 'running')
    WHERE tenant = NEW.tenant;
END;

CREATE TRIGGER jobs_queue_update AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state
    AND (OLD.state IN ('queued', 'running') OR NEW.state IN ('queued', 'running'))
BEGIN
    INSERT OR IGNORE INTO tenant_queue (tenant) VALUES (NEW.tenant);
    UPDATE tenant_queue
    SET queued = queued + (NEW.state = 'queued') - (OLD.state = 'queued'),
        running = running + (NEW.state = 'running') - (OLD.state = 'running')
    WHERE tenant = NEW.tenant;
END;

CREATE TRIGGER jobs_queue_delete AFTER DELETE ON jobs
WHEN OLD.state IN ('queued', 'running')
BEGIN
    UPDATE tenant_queue SET queued = queued - (OLD.state = 'queued'),
        running = running - (OLD.state = 'running')
    WHERE tenant = OLD.tenant;
END;

CREATE INDEX jobs_delayed ON jobs(tenant, run_at, next_attempt_at)
WHERE state = 'queued' AND (run_at IS NOT NULL OR next_attempt_at IS NOT NULL);
