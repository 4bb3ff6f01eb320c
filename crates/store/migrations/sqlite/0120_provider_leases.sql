-- Lease nonces a leader holds on its provider's resources (a Fly machine's lease), by the
-- resource's provider id, so that a successor leader can use them at once instead of waiting
-- for them to lapse (ADR 0023). Rows past expires_at (ms since the epoch) are dead and pruned.
CREATE TABLE provider_leases (
    provider_id TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
