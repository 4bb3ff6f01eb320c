-- Queued and running jobs per tenant, kept by a trigger in the transaction of every change of a
-- job's state, so the control loop's snapshot reads one row per tenant instead of counting the
-- backlog. The delayed jobs (a start time or a retry's backoff) are the only ones the snapshot
-- still reads from `jobs`, through `jobs_delayed`, which holds nothing else.
CREATE TABLE tenant_queue (
    tenant  TEXT PRIMARY KEY,
    queued  BIGINT NOT NULL DEFAULT 0,
    running BIGINT NOT NULL DEFAULT 0
);

INSERT INTO tenant_queue (tenant, queued, running)
SELECT tenant, COUNT(*) FILTER (WHERE state = 'queued'), COUNT(*) FILTER (WHERE state = 'running')
FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant;

CREATE FUNCTION jobs_queue_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dq BIGINT := 0;
    dr BIGINT := 0;
    t TEXT;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        t := OLD.tenant;
        dq := dq - (OLD.state = 'queued')::int;
        dr := dr - (OLD.state = 'running')::int;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        t := NEW.tenant;
        dq := dq + (NEW.state = 'queued')::int;
        dr := dr + (NEW.state = 'running')::int;
    END IF;
    IF dq <> 0 OR dr <> 0 THEN
        INSERT INTO tenant_queue AS q (tenant, queued, running) VALUES (t, dq, dr)
        ON CONFLICT (tenant) DO UPDATE
        SET queued = q.queued + EXCLUDED.queued, running = q.running + EXCLUDED.running;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_queue_count AFTER INSERT OR DELETE OR UPDATE OF state ON jobs
FOR EACH ROW EXECUTE FUNCTION jobs_queue_count();

CREATE INDEX jobs_delayed ON jobs(tenant, run_at, next_attempt_at)
WHERE state = 'queued' AND (run_at IS NOT NULL OR next_attempt_at IS NOT NULL);
