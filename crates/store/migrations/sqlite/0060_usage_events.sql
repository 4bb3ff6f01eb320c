-- Usage events. A ledger entry may carry a note: a reconciliation's finding (which time closed
-- an interval and why) or how the store adjusted it.
ALTER TABLE ledger ADD COLUMN note TEXT;

-- The billing interval each running sandbox has open: from `start` (its ledger entry), billed up
-- to `billed_to` (the last hour boundary cut, or `start`). Written in the transaction of the
-- ledger entry that opens or closes it; each cut and close writes its usage events to the outbox
-- in that same transaction.
CREATE TABLE usage_open (
    sandbox_id  TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    start       BIGINT NOT NULL,
    billed_to   BIGINT NOT NULL,
    cpus_milli  BIGINT NOT NULL,
    memory_mb   BIGINT NOT NULL
);

-- Sandboxes running when this version starts: their open interval, as the ledger has it
-- (the first `running` after the last `stopped`). Earlier, closed intervals get no events.
INSERT INTO usage_open (sandbox_id, tenant, provider, start, billed_to, cpus_milli, memory_mb)
SELECT l.sandbox_id, l.tenant,
       COALESCE((SELECT s.provider FROM sandboxes s WHERE s.id = l.sandbox_id), 'unknown'),
       l.at, l.at, COALESCE(l.cpus_milli, 0), COALESCE(l.memory_mb, 0)
FROM ledger l
WHERE l.kind = 'running'
  AND l.seq = (SELECT MIN(r.seq) FROM ledger r
               WHERE r.sandbox_id = l.sandbox_id AND r.kind = 'running'
                 AND r.seq > COALESCE((SELECT MAX(p.seq) FROM ledger p
                                       WHERE p.sandbox_id = l.sandbox_id AND p.kind = 'stopped'), 0));

-- Where a named reader of usage events (the push to `--usage-sink`) has got to: the position
-- of the last event it delivered, so it resumes there after a restart.
CREATE TABLE usage_cursors (
    name        TEXT PRIMARY KEY,
    position    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

