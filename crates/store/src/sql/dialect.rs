//! The few pieces of SQL in which the two databases differ, one module per backend with the same
//! constants. The shared statements of [`crate::sql`] splice these in; everything else is written
//! once. SQLite runs one writing transaction at a time (`BEGIN IMMEDIATE`), so it needs no row
//! locks; Postgres lets replicas write at once, so it locks the rows a transaction decides on.

/// SQLite: the single writer is the lock.
pub(crate) mod sqlite {
    /// Appended to a read of rows the transaction will change: nothing, the writer is alone.
    pub(crate) const FOR_UPDATE: &str = "";
    /// Appended to the lease's pick of the next job: nothing to skip.
    pub(crate) const SKIP_LOCKED: &str = "";
    /// Appended to the check that a job is running under a lease, before its output is added.
    pub(crate) const HOLD_JOB: &str = "";
    /// A statement (bound to the tenant) that makes leases of one tenant with a concurrency limit
    /// take turns; none needed.
    pub(crate) const TENANT_TURN: Option<&str> = None;
    /// The larger of two values (SQLite's two-argument `MAX`).
    pub(crate) const GREATEST: &str = "MAX";
    /// The jobs table read for its delayed queued jobs only: by their partial index, which
    /// SQLite's planner, without statistics, would otherwise pass over for `jobs_due` (all
    /// queued jobs).
    pub(crate) const DELAYED_JOBS: &str = "jobs INDEXED BY jobs_delayed";
    /// The `seq` column of an admitted job and its value: SQLite numbers jobs itself, in order.
    pub(crate) const JOB_SEQ_COL: &str = ", seq";
    pub(crate) const JOB_SEQ_VALUE: &str = ", (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)";
    /// A cursor read of the outbox: its columns, its condition past cursor `($1, $2)`, its
    /// order. One writer at a time commits rows in `seq` order, so `seq` is the cursor (`txid`
    /// is 0).
    pub(crate) const CURSOR_COLS: &str = "0 AS txid, seq, id, topic, tenant, payload, created_at";
    pub(crate) const CURSOR_AFTER: &str = "$1 >= 0 AND seq > $2";
    pub(crate) const CURSOR_ORDER: &str = "seq";
    /// A ready sandbox's lease in one statement: none (a statement costs no round trip here;
    /// the lease's transaction runs its steps).
    pub(crate) const LEASE_ONE: Option<&str> = None;
}

/// Postgres: row locks taken in one order (sandbox, then tenant, then jobs).
pub(crate) mod postgres {
    /// Appended to a read of rows the transaction will change: lock them.
    pub(crate) const FOR_UPDATE: &str = " FOR UPDATE";
    /// Appended to the lease's pick of the next job: jobs another replica is leasing right now
    /// are skipped, not waited for.
    pub(crate) const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
    /// The job's row, locked: appends to one job take turns, and a completion (which locks the
    /// row to end the job) waits for an append in flight, so nothing is added after the end.
    pub(crate) const HOLD_JOB: &str = " FOR NO KEY UPDATE";
    /// Leases of one tenant with a concurrency limit take turns on the tenant row, so two
    /// replicas cannot both see one free slot. (`NO KEY UPDATE` leaves admissions' foreign-key
    /// checks on the tenant unblocked.)
    pub(crate) const TENANT_TURN: Option<&str> =
        Some("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE");
    /// The larger of two values.
    pub(crate) const GREATEST: &str = "GREATEST";
    /// The jobs table read for its delayed queued jobs only (the planner picks the partial
    /// index `jobs_delayed` from the condition).
    pub(crate) const DELAYED_JOBS: &str = "jobs";
    /// The `seq` column of an admitted job: its sequence's default.
    pub(crate) const JOB_SEQ_COL: &str = "";
    pub(crate) const JOB_SEQ_VALUE: &str = "";
    /// A cursor read of the outbox: its columns, its condition past cursor `($1, $2)`, its
    /// order. `seq` is handed out at insert, not at commit, so only rows of transactions older
    /// than every one still running are read, in `(txid, seq)` order: a row that can still
    /// appear sorts after every row already read (see [`crate::usage`]).
    pub(crate) const CURSOR_COLS: &str = "txid, seq, id, topic, tenant, payload, created_at";
    pub(crate) const CURSOR_AFTER: &str =
        "txid < txid_snapshot_xmin(txid_current_snapshot()) AND (txid, seq) > ($1, $2)";
    pub(crate) const CURSOR_ORDER: &str = "txid, seq";
    /// A ready sandbox's lease in one statement (see `dispatch::lease_one`): the sandbox row
    /// locked first (the scalar subquery is an init plan, run before the jobs are read), the
    /// tenant's next due job picked `SKIP LOCKED` and marked running, the sandbox seen and
    /// made busy when it got a job, and the lease's audit record written. `$1` sandbox, `$2`
    /// now, `$3` lease id, `$4` lease expiry, `$5` the audit record's outbox id. One row, the
    /// sandbox's state and the job's columns (NULL without a job); none without the sandbox.
    pub(crate) const LEASE_ONE: Option<&str> = Some(const_format::concatcp!(
        "WITH sb AS (SELECT id, tenant, state FROM sandboxes WHERE id = $1 FOR UPDATE), \
         pick AS (SELECT id FROM jobs WHERE tenant = (SELECT tenant FROM sb WHERE state = 'ready') \
           AND state = 'queued' AND (run_at IS NULL OR run_at <= $2) \
           AND (next_attempt_at IS NULL OR next_attempt_at <= $2) \
           ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED), \
         job AS (UPDATE jobs SET state = 'running', attempts = attempts + 1, sandbox_id = $1, \
           lease_id = $3, lease_expires_at = $4, started_at = $2, next_attempt_at = NULL \
           WHERE id = (SELECT id FROM pick) AND state = 'queued' RETURNING ",
        crate::rows::JOB_COLS,
        "), seen AS (UPDATE sandboxes SET last_seen = $2, \
           state = CASE WHEN EXISTS (SELECT 1 FROM job) THEN 'busy' ELSE state END, \
           since = CASE WHEN EXISTS (SELECT 1 FROM job) THEN $2 ELSE since END, \
           idle_since = CASE WHEN EXISTS (SELECT 1 FROM job) THEN NULL ELSE idle_since END \
           WHERE id = $1 AND (SELECT state FROM sb) = 'ready' RETURNING id), \
         audit AS (INSERT INTO outbox (id, topic, tenant, payload, created_at) \
           SELECT $5, 'audit', job.tenant, json_build_object('at', $2::BIGINT, \
             'actor', json_build_object('kind', 'sandbox', 'id', $1::TEXT), \
             'action', 'job.lease', 'target', 'job/' || job.id, \
             'detail', json_build_object('tenant', job.tenant, 'attempt', job.attempts, \
               'lease_id', job.lease_id))::TEXT, $2 FROM job RETURNING id) \
         SELECT sb.state AS sandbox_state, (SELECT count(*) FROM seen) AS seen, \
           (SELECT count(*) FROM audit) AS audited, job.* FROM sb LEFT JOIN job ON true"
    ));
}
