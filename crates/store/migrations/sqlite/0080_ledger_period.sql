-- The budget check reads a tenant's ledger for the current month only: the month's entries by
-- time, then each of their sandboxes' entries whole.
CREATE INDEX ledger_tenant_at ON ledger(tenant, at);
CREATE INDEX ledger_sandbox ON ledger(sandbox_id, seq);
