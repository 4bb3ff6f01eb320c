-- A job's output as its agent ships it while the command runs: chunks of bytes at offsets in the
-- job's output stream, of which only the newest `max_log_bytes` are kept (older chunks are
-- deleted, a chunk cut by the limit keeps its tail).

-- One row per job with output: what is kept and where the current attempt's stream stands.
CREATE TABLE job_log_heads (
    job_id        TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    -- The offset of the oldest byte kept.
    start_offset  INTEGER NOT NULL,
    -- Bytes written in all (kept or dropped): the offset the next chunk starts at.
    end_offset    INTEGER NOT NULL,
    -- The lease whose output is being appended, and how far into that attempt's stream the
    -- agent's chunks have reached (a chunk sent again after a lost answer is recognised).
    lease_id      TEXT NOT NULL,
    lease_pos     INTEGER NOT NULL
);

CREATE TABLE job_logs (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    start_offset  INTEGER NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (job_id, start_offset)
);
