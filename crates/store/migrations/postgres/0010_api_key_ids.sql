-- API keys get an id to list and revoke them by (keys made before it get one from their hash,
-- which is no secret), and the time each was last used.
ALTER TABLE api_keys ADD COLUMN id TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
UPDATE api_keys SET id = 'key_' || substr(key_hash, 1, 32) WHERE id IS NULL;
ALTER TABLE api_keys ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX api_keys_id ON api_keys(id);
CREATE INDEX api_keys_tenant ON api_keys(tenant);
