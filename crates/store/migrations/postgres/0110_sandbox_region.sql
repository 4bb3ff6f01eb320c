-- Where a sandbox runs, when its provider places by region and has said (a Fly machine's
-- region); NULL when unknown or not placed by region.
ALTER TABLE sandboxes ADD COLUMN region TEXT;
