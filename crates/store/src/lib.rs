//! Shoal's persistence: the [`Store`] trait the scheduler, dispatcher and fleet use, its records,
//! its two implementations (SQLite, the embedded default, and Postgres, for several replicas; pick
//! one from a URL with [`open`]), and the apalis ingress queue ([`ingress`]). Every state change that must not be lost
//! or doubled (admission with its idempotency key and quota, a lease, a completion) is one
//! transaction here, so the invariants hold whatever the callers race.
#![warn(missing_docs)]

pub mod audit;
pub mod ingress;
pub mod joblog;
pub mod outbox;
pub mod postgres;
pub mod ratelimit;
pub mod retention;
mod rows;
pub mod schedules;
pub mod sizing;
mod sql;
pub mod sqlite;
mod tenants;
pub mod usage;
pub mod warm;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shoal_core::audit::Actor;
use shoal_core::{
    AttemptRecord, JobState, Limits, LimitsPatch, Millis, PlanTier, RetryPolicy, SandboxState,
};
use shoal_metering::LedgerEntry;

pub use audit::AuditLog;
pub use outbox::{
    AttemptOutcome, DeliveryRecord, DeliveryState, EndpointRecord, LeasedDelivery, NewEndpoint,
    Outbox, OutboxEvent, OutboxRecord, QuotaSignal,
};
pub use postgres::{PoolOptions, PostgresStore};
pub use retention::{Deleted, Expired, Retention};
pub use sizing::{JobUsageRecord, Sizing};
pub use sqlite::SqliteStore;
use std::sync::Arc;
pub use usage::{Metering, OpenUsage, UsageCursor, UsageEventRecord};
pub use warm::{BlankRecord, BlankState, NewBlank, WarmPool};

/// [`open`] with the pool's size given (Postgres; SQLite ignores it).
pub async fn open_with(url: &str, pool: &PoolOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open_with(url, pool).await?))
    } else {
        open(url).await
    }
}

/// Opens the store a database URL names: `sqlite://PATH` (or `sqlite::memory:`) for SQLite,
/// `postgres://…` or `postgresql://…` for Postgres. Either way the schema is brought up to date.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.into()))
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Bringing the schema up to date failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value this version does not understand.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The URL names no database this store speaks.
    #[error("unsupported database URL `{0}` (sqlite://PATH or postgres://USER@HOST/DB)")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// The database cannot be reached now (as opposed to a query that is wrong).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            ) => true,
            // Postgres: connection exceptions (class 08), the server shutting down or not
            // accepting connections yet (57P01-57P03).
            StoreError::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

/// The store's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantRecord {
    /// The tenant's id.
    pub id: String,
    /// Its plan.
    pub plan: PlanTier,
    /// Its limits that differ from the plan's.
    pub overrides: LimitsPatch,
    /// Draining: its sandboxes get no new jobs.
    pub draining: bool,
    /// When the tenant was last warned of nearing its monthly quota.
    pub quota_warned_at: Option<Millis>,
    /// When it was created.
    pub created_at: Millis,
    /// When it was last changed.
    pub updated_at: Millis,
}

impl TenantRecord {
    /// The plan's limits with the tenant's overrides.
    pub fn limits(&self) -> Limits {
        Limits::resolve(self.plan, &self.overrides)
    }
}

/// A tenant's API key as stored (its hash only; the key itself is never kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The key's id, to list and revoke it by (not a secret).
    pub id: String,
    /// The tenant the key belongs to.
    pub tenant: String,
    /// When it was created.
    pub created_at: Millis,
    /// When it was last used.
    pub last_used_at: Option<Millis>,
}

/// A page of the jobs list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    /// Newest first; each without its spec (`null`), which a list never shows.
    pub jobs: Vec<JobRecord>,
    /// More jobs match after the last of this page.
    pub more: bool,
}

/// The bytes a job takes in a page of the list: its result and error as stored, plus a fixed
/// allowance for its other fields.
pub fn listed_bytes(result_len: usize, error_len: usize) -> u64 {
    (result_len + error_len) as u64 + 512
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// What the agent runs it with.
    pub kind: String,
    /// Its input, as admitted (`null` in a list), as its JSON text: a `semantic_diff` job's
    /// documents keep their numbers as written.
    pub spec: shoal_protocol::JsonText,
    /// The tenant's key that makes a repeated admission return this job.
    pub idempotency_key: Option<String>,
    /// Higher leases first.
    pub priority: i32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout_s: u64,
    /// Where it is.
    pub state: JobState,
    /// Attempts begun.
    pub attempts: u32,
    /// The sandbox running it (or, for a dead job, that last ran it).
    pub sandbox_id: Option<String>,
    /// The current attempt's lease.
    pub lease_id: Option<String>,
    /// When the current lease lapses unless heartbeated.
    pub lease_expires_at: Option<Millis>,
    /// What the last attempt returned, as the JSON text the agent sent (kept as text, so that
    /// numbers no double holds come back as written).
    pub result: Option<shoal_protocol::JsonText>,
    /// Why the last attempt failed.
    pub error: Option<serde_json::Value>,
    /// When it was admitted.
    pub created_at: Millis,
    /// When the current or last attempt began.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// Order of admission; the list cursor.
    pub seq: i64,
    /// Not leased before this time (a delayed or scheduled job).
    pub run_at: Option<Millis>,
    /// After an attempt that will be tried again: not leased before this time.
    pub next_attempt_at: Option<Millis>,
    /// The retry policy (`max_attempts` is the same as the field above).
    pub retry: RetryPolicy,
    /// One entry per attempt that ended.
    pub attempt_history: Vec<AttemptRecord>,
    /// The schedule that made the job (`TENANT/NAME`).
    pub schedule: Option<String>,
}

impl JobRecord {
    /// When a queued job may be leased: the later of its `run_at` and `next_attempt_at`.
    pub fn due_at(&self) -> Option<Millis> {
        self.run_at.max(self.next_attempt_at)
    }
}

/// A job to admit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The job's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// What the agent runs it with.
    pub kind: String,
    /// Its input, as its JSON text.
    pub spec: shoal_protocol::JsonText,
    /// The tenant's key that makes a repeated admission return the first job.
    pub idempotency_key: Option<String>,
    /// Higher leases first.
    pub priority: i32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout_s: u64,
    /// When it is admitted.
    pub created_at: Millis,
    /// Not leased before this time.
    pub run_at: Option<Millis>,
    /// The retry policy; its `max_attempts` is stored as `max_attempts` above, which wins.
    pub retry: RetryPolicy,
    /// The schedule that made the job (`TENANT/NAME`).
    pub schedule: Option<String>,
}

/// What admitting a job did.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Stored; `period_jobs` is the tenant's count of jobs this month, this one included.
    /// `signals` are the quota thresholds this admission crossed (each once per period), whose
    /// events were written with it.
    Created {
        /// The job as stored.
        job: JobRecord,
        /// The tenant's jobs this month, this one included.
        period_jobs: u64,
        /// The quota thresholds this admission crossed.
        signals: Vec<QuotaSignal>,
    },
    /// The idempotency key was seen before: the first job.
    Existing(JobRecord),
    /// The monthly quota is used up; nothing was stored.
    QuotaExceeded {
        /// Jobs admitted this month.
        used: u64,
        /// The monthly quota.
        limit: u64,
    },
}

/// A cron schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRecord {
    /// The tenant.
    pub tenant: String,
    /// The schedule's name, unique per tenant.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone the cron reads in.
    pub timezone: String,
    /// The body each fire admits (as `POST /v1/jobs` takes it, without `tenant`), as the
    /// caller wrote it (a `semantic_diff` job's documents keep their numbers exactly).
    pub job: shoal_protocol::JsonText,
    /// The next fire time not yet made into a job; `None` when the cron has no further match.
    pub next_fire_at: Option<Millis>,
    /// The last fire time made into a job.
    pub last_fire_at: Option<Millis>,
    /// When it was created.
    pub created_at: Millis,
    /// When it was last changed.
    pub updated_at: Millis,
}

/// One fire of a schedule: its `next_fire_at` as read (`claimed`) and where it moves (`next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFire {
    /// The schedule's tenant.
    pub tenant: String,
    /// The schedule's name.
    pub name: String,
    /// The fire time read.
    pub claimed: Millis,
    /// The next fire time.
    pub next: Option<Millis>,
}

/// A schedule to create or replace.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// The tenant.
    pub tenant: String,
    /// The schedule's name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone the cron reads in.
    pub timezone: String,
    /// The body each fire admits, as the caller wrote it.
    pub job: shoal_protocol::JsonText,
    /// The first fire time.
    pub next_fire_at: Option<Millis>,
    /// When it is written.
    pub now: Millis,
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxRecord {
    /// The sandbox's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Where it is.
    pub state: SandboxState,
    /// The provider that runs it.
    pub provider: String,
    /// The provider's id of it, once known.
    pub provider_id: Option<String>,
    /// Its vCPUs, in thousandths.
    pub cpus_milli: u64,
    /// Its memory, in MiB.
    pub memory_mb: u64,
    /// When it entered its state.
    pub since: Millis,
    /// Since when it has been ready with nothing to run.
    pub idle_since: Option<Millis>,
    /// When its agent was last heard from.
    pub last_seen: Option<Millis>,
    /// Jobs it has run.
    pub jobs_run: u64,
    /// When it was created.
    pub created_at: Millis,
    /// The region it runs in, when its provider places by region and has said.
    pub region: Option<String>,
}

impl SandboxRecord {
    /// Its last sign of life: when its agent was last heard from (a heartbeat, a lease request),
    /// or when it entered its state if that is later (a lease, a completion, or a state change of
    /// the scheduler's own).
    pub fn last_sign(&self) -> Millis {
        self.last_seen
            .map_or(self.since, |seen| seen.max(self.since))
    }
}

/// A sandbox to record before the provider is asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    /// The sandbox's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// The provider asked for it.
    pub provider: String,
    /// The hash of its agent's token.
    pub token_hash: String,
    /// Its vCPUs, in thousandths.
    pub cpus_milli: u64,
    /// Its memory, in MiB.
    pub memory_mb: u64,
    /// When it is recorded.
    pub now: Millis,
}

/// What the dispatcher may hand out to one sandbox now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeasePolicy {
    /// At most this many of the tenant's jobs running at once.
    pub max_concurrent_jobs: Option<u32>,
    /// The tenant is draining: no new jobs.
    pub draining: bool,
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl_ms: Millis,
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq)]
pub enum Lease {
    /// A job to run, leased.
    Job(Box<JobRecord>),
    /// Nothing to run now.
    Idle,
    /// The sandbox is being stopped or is unknown: its agent should exit.
    Stop,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The lease is still the job's and was extended.
    pub ok: bool,
    /// The job was cancelled: the agent should stop it.
    pub cancel: bool,
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The job did what it was asked.
    Succeeded {
        /// What it returned.
        result: shoal_protocol::JsonText,
    },
    /// The attempt failed; retried if the job's policy allows.
    Failed {
        /// What it returned, if anything.
        result: Option<shoal_protocol::JsonText>,
        /// Why it failed.
        error: serde_json::Value,
    },
    /// Hand the job back (its agent is stopping): it goes back to the queue and the attempt is
    /// not counted.
    Retry {
        /// Why it was handed back.
        error: serde_json::Value,
    },
}

/// The answer to a completion.
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    /// The attempt was recorded; the job as it now is.
    Done(Box<JobRecord>),
    /// The lease is not the job's current one (lapsed, cancelled, or already completed).
    Stale,
}

/// Filters of the jobs list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only this tenant's jobs.
    pub tenant: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many jobs.
    pub limit: u32,
    /// Only jobs admitted before this one (`seq` below it).
    pub before_seq: Option<i64>,
}

/// Queue counts of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Queued jobs, due or not.
    pub queued: u64,
    /// Running jobs.
    pub running: u64,
    /// Of the queued jobs, those not due yet (a later `run_at` or `next_attempt_at`).
    pub waiting: u64,
    /// The earliest time a waiting job falls due.
    pub next_due: Option<Millis>,
}

/// A recorded operator-facing event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// Order of recording; the cursor of the list.
    pub seq: i64,
    /// The tenant it concerns; `None`: the platform's.
    pub tenant: Option<String>,
    /// When it happened.
    pub at: Millis,
    /// What happened.
    pub kind: String,
    /// Its details.
    pub detail: serde_json::Value,
}

/// The answer to shipping a chunk of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// Stored (or already stored); the log now holds the bytes from `start` to `end`.
    Stored {
        /// The offset of the oldest byte kept.
        start: u64,
        /// Bytes written in all.
        end: u64,
    },
    /// The job is not running on that sandbox under that lease: nothing was stored.
    Stale,
}

/// A stretch of a job's kept output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSlice {
    /// The offset of the oldest byte kept.
    pub start: u64,
    /// Bytes written in all: where the next output will start.
    pub end: u64,
    /// The offset `data` starts at (the one asked for, or `start` when that was trimmed away).
    pub at: u64,
    /// The bytes from `at` on.
    pub data: Vec<u8>,
}

/// A finished job, for usage reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    /// When the job finished.
    pub at: Millis,
    /// How it finished.
    pub state: JobState,
}

/// Persistence for everything the scheduler knows; the outbox's part is [`Outbox`].
#[async_trait]
pub trait Store:
    Outbox + AuditLog + Retention + Metering + Sizing + WarmPool + Send + Sync + 'static
{
    // Tenants and keys.
    /// Creates or updates a tenant; `true` when it was created.
    async fn put_tenant(
        &self,
        id: &str,
        plan: PlanTier,
        overrides: &LimitsPatch,
        now: Millis,
        actor: &Actor,
    ) -> Result<(TenantRecord, bool)>;
    /// The tenant `id`, if it exists.
    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>>;
    /// Every tenant, by id.
    async fn tenants(&self) -> Result<Vec<TenantRecord>>;
    /// Drains (a draining tenant's sandboxes get no new jobs) or undrains a tenant; `true` when
    /// it exists. Recorded in the audit log.
    async fn set_draining(
        &self,
        id: &str,
        draining: bool,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool>;
    /// Marks the tenant warned for the period starting at `period_start`; `true` only the first
    /// time in that period.
    async fn mark_quota_warned(&self, id: &str, period_start: Millis, now: Millis) -> Result<bool>;
    /// Records a new key of `tenant` by its id and hash.
    async fn add_key(
        &self,
        tenant: &str,
        key_id: &str,
        key_hash: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<()>;
    /// The tenant of the key with this hash, if the key exists.
    async fn key_tenant(&self, key_hash: &str) -> Result<Option<String>>;
    /// The key with this hash, if it exists (a revoked key does not).
    async fn key(&self, key_hash: &str) -> Result<Option<KeyRecord>>;
    /// The tenant's keys, oldest first.
    async fn keys(&self, tenant: &str) -> Result<Vec<KeyRecord>>;
    /// Deletes the tenant's key `key_id`; `true` if there was one. Every replica reads keys from
    /// the store on each request, so the key stops working everywhere at once.
    async fn revoke_key(
        &self,
        tenant: &str,
        key_id: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool>;
    /// Records that the key was used at `now`.
    async fn touch_key(&self, key_id: &str, now: Millis) -> Result<()>;
    /// Jobs the tenant had admitted in the period starting at `period_start`.
    async fn period_jobs(&self, tenant: &str, period_start: Millis) -> Result<u64>;

    // Jobs.
    /// Admits a job with its idempotency key and quota (`limit` jobs in the period starting at
    /// `period_start`), in one transaction. Crossing 80% or 100% of the quota (once per period)
    /// writes a `quota.warning` / `quota.exceeded` event in that transaction, as does the first
    /// refusal of a period when the quota was never reached by an admission (a lowered limit).
    async fn admit(
        &self,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
        actor: &Actor,
    ) -> Result<Admitted>;
    /// Admits a batch of jobs, each `(job, limit)` as [`Store::admit`] admits one (its own
    /// tenant's quota `limit` in the period starting at `period_start`, its idempotency key), in
    /// one transaction: one answer per job, in order. Within the batch, jobs are admitted in
    /// order per tenant, so a batch crossing a quota admits exactly up to it, and a key repeated
    /// in the batch answers its first job. Tenants' quota rows are taken in tenant order, so two
    /// batches never wait on each other in a cycle.
    async fn admit_batch(
        &self,
        jobs: Vec<(NewJob, Option<u64>)>,
        period_start: Millis,
        actor: &Actor,
    ) -> Result<Vec<Admitted>>;
    /// The job `id`, with its spec.
    async fn job(&self, id: &str) -> Result<Option<JobRecord>>;
    /// Jobs matching `filter`, newest first, with their specs.
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>>;
    /// A page of the jobs list: at most `filter.limit` jobs, newest first, without their specs,
    /// stopping before the job whose [`listed_bytes`] would take the page over `max_bytes` (a
    /// page holds at least one job). Rows are read one at a time, so the page's bound is also what
    /// the store holds in memory.
    async fn job_page(&self, filter: &JobFilter, max_bytes: u64) -> Result<JobPage>;
    /// Cancels a queued or running job; a finished one is returned as it is. Every change of a job
    /// to a terminal state (here, in `complete`, and when a put-back job is out of attempts in
    /// `lease`, `expire_leases` and `sandbox_down`) writes its `job.*` event to the outbox in
    /// the same transaction.
    async fn cancel(&self, id: &str, now: Millis, actor: &Actor) -> Result<Option<JobRecord>>;
    /// Queued and running jobs per tenant; queued jobs not yet due at `now` are also counted as
    /// `waiting`, with the earliest time one falls due.
    async fn queue_counts(&self, now: Millis) -> Result<Vec<(String, QueueCounts)>>;
    /// The earliest time after `now` at which a queued job of `tenant` falls due, if any (the
    /// lease long poll sleeps until then).
    async fn next_due(&self, tenant: &str, now: Millis) -> Result<Option<Millis>>;

    // Schedules.
    /// Creates or replaces a schedule; `true` when it was created. Recorded in the audit log.
    async fn put_schedule(&self, s: &NewSchedule, actor: &Actor) -> Result<(ScheduleRecord, bool)>;
    /// The schedule `name` of `tenant`, if it exists.
    async fn schedule(&self, tenant: &str, name: &str) -> Result<Option<ScheduleRecord>>;
    /// Schedules of one tenant or all, by tenant and name.
    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>>;
    /// Deletes a schedule; `true` if there was one. Recorded in the audit log.
    async fn delete_schedule(
        &self,
        tenant: &str,
        name: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool>;
    /// Fires a schedule once, in one transaction: only if its `next_fire_at` is still
    /// `fire.claimed` (another replica did not fire it first), advances it to `fire.next` and
    /// admits `job` (whose idempotency key names the schedule and the fire time, so a fire time
    /// makes one job even if two transactions race). `None` when the schedule moved on or is gone.
    async fn fire_schedule(
        &self,
        fire: &ScheduleFire,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
    ) -> Result<Option<Admitted>>;

    // Dispatch.
    /// The sandbox's agent asks for work: leases it the tenant's next due job under `policy`
    /// (highest priority first, then oldest), or answers idle or stop. A busy sandbox asking
    /// again lost its job, which is put back.
    async fn lease(&self, sandbox_id: &str, policy: LeasePolicy, now: Millis) -> Result<Lease>;
    /// Extends a running job's lease to `now + ttl_ms`; `ok` is false when the lease is no
    /// longer the job's, and `cancel` tells the agent the job was cancelled.
    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        ttl_ms: Millis,
        now: Millis,
    ) -> Result<HeartbeatAnswer>;
    /// Records how an attempt ended, if `lease_id` is still the job's lease on that sandbox
    /// (else [`Completed::Stale`]): a success, a failure (retried after its backoff or final),
    /// or a job handed back; the sandbox is ready again when it holds no other job.
    async fn complete(
        &self,
        sandbox_id: &str,
        job_id: &str,
        lease_id: &str,
        finish: Finish,
        now: Millis,
    ) -> Result<Completed>;
    /// Puts back (or kills, when spent) every running job whose lease lapsed before `now`.
    async fn expire_leases(&self, now: Millis) -> Result<Vec<JobRecord>>;

    // Sandboxes.
    /// Records a new sandbox, booting, before the provider is asked for it.
    async fn insert_sandbox(&self, s: NewSandbox) -> Result<SandboxRecord>;
    /// Records the provider's id of a sandbox.
    async fn set_provider_id(&self, id: &str, provider_id: &str) -> Result<()>;
    /// Keeps the nonce of a lease held on a provider's resource until `expires_at`, for a
    /// successor leader (migration 0120); prunes the leases that expired before `now`.
    async fn keep_provider_lease(
        &self,
        provider_id: &str,
        nonce: &str,
        expires_at: Millis,
        now: Millis,
    ) -> Result<()>;
    /// The nonce kept for `provider_id` and its expiry, if it expires after `now`.
    async fn provider_lease(
        &self,
        provider_id: &str,
        now: Millis,
    ) -> Result<Option<(String, Millis)>>;
    /// Forgets the lease kept for `provider_id`.
    async fn forget_provider_lease(&self, provider_id: &str) -> Result<()>;
    /// Records the region the provider placed a sandbox in.
    async fn set_sandbox_region(&self, id: &str, region: &str) -> Result<()>;
    /// The known region of each of `tenant`'s sandboxes (or every tenant's), destroyed ones
    /// included, by sandbox id: what usage is grouped by.
    async fn sandbox_regions(
        &self,
        tenant: Option<&str>,
    ) -> Result<std::collections::HashMap<String, String>>;
    /// Moves a sandbox to `to` if it is in one of `from`; `true` if it moved.
    async fn transition(
        &self,
        id: &str,
        from: &[SandboxState],
        to: SandboxState,
        now: Millis,
    ) -> Result<bool>;
    /// The sandbox stopped or vanished (asked for or not): records `to` and puts its running jobs
    /// back. Returns the jobs put back.
    async fn sandbox_down(&self, id: &str, to: SandboxState, now: Millis)
    -> Result<Vec<JobRecord>>;
    /// Marks a `ready` or `busy` sandbox `unhealthy` if its last sign of life
    /// ([`SandboxRecord::last_sign`]) is at or before `silent_since` (pass `Millis::MAX` for a
    /// provider's report, which needs no silence): its running jobs go back as lost (one attempt
    /// used, by their retry policy). Decided under the sandbox's lock, so an agent that called in
    /// since the caller read the sandbox keeps it. Returns the sandbox as it was and the jobs put
    /// back; `None` when it was not marked.
    async fn sandbox_unhealthy(
        &self,
        id: &str,
        silent_since: Millis,
        now: Millis,
    ) -> Result<Option<(SandboxRecord, Vec<JobRecord>)>>;
    /// The sandbox `id`, whatever its state.
    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>>;
    /// The sandbox whose agent token hashes to `token_hash`.
    async fn sandbox_by_token(&self, token_hash: &str) -> Result<Option<SandboxRecord>>;
    /// Sandboxes that still exist, of one tenant or all.
    async fn sandboxes(&self, tenant: Option<&str>) -> Result<Vec<SandboxRecord>>;

    // Ledger and events.
    /// Appends to the ledger with no prices and the default source: [`Metering::record_ledger`].
    async fn append_ledger(&self, entry: &LedgerEntry) -> Result<()>;
    /// The ledger of one tenant or all, in order.
    async fn ledger(&self, tenant: Option<&str>) -> Result<Vec<LedgerEntry>>;
    /// The part of `tenant`'s ledger that bears on its usage from `from` on, in order: every
    /// entry of each sandbox that has an entry at or after `from` or is running now. The
    /// intervals it makes ([`shoal_metering::intervals`]) are the whole ledger's, less ones that
    /// ended before `from`, so a total over a period starting at `from` is the same; but it reads
    /// only the period's entries and their sandboxes' (by index), not the tenant's whole history.
    async fn period_ledger(&self, tenant: &str, from: Millis) -> Result<Vec<LedgerEntry>>;
    /// Jobs of one tenant or all that finished in `from..to`, for usage reports.
    async fn finished_jobs(
        &self,
        tenant: Option<&str>,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Finished>>;
    /// Records an operators' event (`GET /v1/events`).
    async fn record_event(
        &self,
        tenant: Option<&str>,
        at: Millis,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<()>;
    /// The newest `limit` operators' events of one tenant or all, newest first.
    async fn events(&self, tenant: Option<&str>, limit: u32) -> Result<Vec<EventRecord>>;

    // Job output.
    /// Stores output that the agent of `sandbox_id` shipped for `job_id` under `lease_id`: `data`
    /// at `offset` of that attempt's output (see [`joblog`]), keeping the newest `max_bytes` of
    /// the job's output. Refused as [`LogAppend::Stale`] unless the job is running on that
    /// sandbox under that lease, so nothing is added once a job has ended.
    async fn append_log(
        &self,
        sandbox_id: &str,
        job_id: &str,
        lease_id: &str,
        offset: u64,
        data: &[u8],
        max_bytes: u64,
    ) -> Result<LogAppend>;
    /// At most `limit` bytes (at least 1) of the job's kept output from offset `from` on.
    async fn job_log(&self, job_id: &str, from: u64, limit: usize) -> Result<LogSlice>;
}
