//! The SQL both stores share. SQLite and Postgres keep the same tables with the same encodings,
//! and `$N` placeholders mean the same on both, so each statement and each rule (the dead-job
//! rule, the lock order, what a completion records) is written once here, in modules whose
//! `for_backend!` macro instantiates the functions once per database. What really differs (row
//! locks on Postgres against SQLite's single writer, a few functions' names) is in [`dialect`];
//! what differs in more than a word (how a tenant upsert tells an insert, opening a connection)
//! stays in `sqlite.rs` and `postgres.rs`. [`impl_store!`] writes the [`crate::Store`] methods
//! once for both: each opens a transaction (or takes a pooled connection to read) and calls the
//! backend's instance of the shared function.

/// Prepared statements kept per connection, on both databases: more than the store has (about
/// 120), so none is prepared twice on one connection (sqlx's default keeps 100, least recently
/// used first out).
pub(crate) const STATEMENT_CACHE: usize = 256;

pub(crate) mod dialect;
pub(crate) mod dispatch;
pub(crate) mod jobs;
pub(crate) mod records;
pub(crate) mod sandboxes;

/// Runs shared function `$f` (which takes the connection first) with `$arg`s in a writing
/// transaction opened by `$store.$begin()`, and commits it.
macro_rules! in_tx {
    ($store:ident . $begin:ident, $f:path $(, $arg:expr)* $(,)?) => {{
        let mut tx = $store.$begin().await?;
        let out = $f(&mut tx $(, $arg)*).await?;
        tx.commit().await?;
        Ok::<_, crate::StoreError>(out)
    }};
}
pub(crate) use in_tx;

/// Runs shared function `$f` with `$arg`s on a connection of `$store`'s pool, outside a
/// transaction (a read, or a single statement).
macro_rules! on_conn {
    ($store:ident, $f:path $(, $arg:expr)* $(,)?) => {{
        let mut c = $store.pool.acquire().await?;
        $f(&mut c $(, $arg)*).await
    }};
}
pub(crate) use on_conn;

/// Implements [`crate::Store`] for `$store`, a store with a `pool`, a method `$begin` that opens
/// a writing transaction, and a function `$backend::upsert_tenant`, with the SQL of the shared
/// modules' `$backend` instances.
macro_rules! impl_store {
    ($store:ident, $backend:ident, $begin:ident) => {
        /// The [`crate::Store`] methods, with the backend's instances of the shared modules.
        mod store {
            use super::$store;
            use crate::sql::dispatch::$backend as dispatch;
            use crate::sql::jobs::$backend as jobs;
            use crate::sql::records::$backend as records;
            use crate::sql::sandboxes::$backend as sandboxes;
            use crate::sql::{in_tx, on_conn};
            use crate::{Admitted, JobRecord, Result, SandboxRecord, ScheduleRecord};
            use crate::{schedules::$backend as schedules, tenants::$backend as tenants};
            use shoal_core::audit::Actor;
            use shoal_core::{Millis, SandboxState};

            #[async_trait::async_trait]
            impl crate::Store for $store {
                async fn put_tenant(
                    &self,
                    id: &str,
                    plan: shoal_core::PlanTier,
                    overrides: &shoal_core::LimitsPatch,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<(crate::TenantRecord, bool)> {
                    let mut tx = self.$begin().await?;
                    let (t, created) =
                        crate::$backend::upsert_tenant(&mut tx, id, plan, overrides, now).await?;
                    let e = crate::audit::tenant_put(actor, &t, created);
                    crate::audit::$backend::record(&mut tx, &e, Some(id)).await?;
                    tx.commit().await?;
                    Ok((t, created))
                }

                async fn tenant(&self, id: &str) -> Result<Option<crate::TenantRecord>> {
                    on_conn!(self, tenants::get, id)
                }

                async fn tenants(&self) -> Result<Vec<crate::TenantRecord>> {
                    on_conn!(self, tenants::list)
                }

                async fn set_draining(
                    &self,
                    id: &str,
                    draining: bool,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<bool> {
                    in_tx!(self.$begin, tenants::set_draining, id, draining, now, actor)
                }

                async fn mark_quota_warned(
                    &self,
                    id: &str,
                    period_start: Millis,
                    now: Millis,
                ) -> Result<bool> {
                    on_conn!(self, tenants::mark_quota_warned, id, period_start, now)
                }

                async fn add_key(
                    &self,
                    tenant: &str,
                    key_id: &str,
                    key_hash: &str,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<()> {
                    in_tx!(
                        self.$begin,
                        tenants::add_key,
                        tenant,
                        key_id,
                        key_hash,
                        now,
                        actor
                    )
                }

                async fn key_tenant(&self, key_hash: &str) -> Result<Option<String>> {
                    on_conn!(self, tenants::key_tenant, key_hash)
                }

                async fn key(&self, key_hash: &str) -> Result<Option<crate::KeyRecord>> {
                    on_conn!(self, tenants::key, key_hash)
                }

                async fn keys(&self, tenant: &str) -> Result<Vec<crate::KeyRecord>> {
                    on_conn!(self, tenants::keys, tenant)
                }

                async fn revoke_key(
                    &self,
                    tenant: &str,
                    key_id: &str,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<bool> {
                    in_tx!(self.$begin, tenants::revoke_key, tenant, key_id, now, actor)
                }

                async fn touch_key(&self, key_id: &str, now: Millis) -> Result<()> {
                    on_conn!(self, tenants::touch_key, key_id, now)
                }

                async fn period_jobs(&self, tenant: &str, period_start: Millis) -> Result<u64> {
                    on_conn!(self, jobs::period_jobs, tenant, period_start)
                }

                async fn admit(
                    &self,
                    job: crate::NewJob,
                    period_start: Millis,
                    limit: Option<u64>,
                    actor: &Actor,
                ) -> Result<Admitted> {
                    let mut tx = self.$begin().await?;
                    let tenant = job.tenant.clone();
                    let key = job.idempotency_key.clone().unwrap_or_default();
                    match jobs::admit_in(&mut tx, &job, period_start, limit, actor).await {
                        // Nothing to keep: the first job stands.
                        Ok(out @ Admitted::Existing(_)) => {
                            tx.rollback().await?;
                            Ok(out)
                        }
                        Ok(out) => {
                            tx.commit().await?;
                            Ok(out)
                        }
                        // The key was taken under another month's turn in the meantime (a request
                        // racing across the month boundary): the first job stands.
                        Err(crate::StoreError::Database(sqlx::Error::Database(e)))
                            if e.constraint() == Some("jobs_idempotency") =>
                        {
                            tx.rollback().await?;
                            let first = on_conn!(self, jobs::by_key, &tenant, &key)?;
                            first.map(Admitted::Existing).ok_or_else(|| {
                                crate::rows::corrupt("an idempotency key without its job")
                            })
                        }
                        Err(e) => Err(e),
                    }
                }

                async fn admit_batch(
                    &self,
                    jobs: Vec<(crate::NewJob, Option<u64>)>,
                    period_start: Millis,
                    actor: &Actor,
                ) -> Result<Vec<Admitted>> {
                    // Tenant order (stable, so each tenant's jobs keep theirs): the lock order.
                    let mut order: Vec<usize> = (0..jobs.len()).collect();
                    order.sort_by(|&a, &b| jobs[a].0.tenant.cmp(&jobs[b].0.tenant));
                    let mut out: Vec<Option<Admitted>> = vec![None; jobs.len()];
                    let mut tx = self.$begin().await?;
                    let mut raced = false;
                    // Each tenant's jobs as one group: its quota row taken and counted once.
                    for group in order.chunk_by(|&a, &b| jobs[a].0.tenant == jobs[b].0.tenant) {
                        let members: Vec<(&crate::NewJob, Option<u64>)> =
                            group.iter().map(|&i| (&jobs[i].0, jobs[i].1)).collect();
                        match jobs::admit_group(&mut tx, &members, period_start, actor).await {
                            Ok(answers) => {
                                for (&i, a) in group.iter().zip(answers) {
                                    out[i] = Some(a);
                                }
                            }
                            Err(crate::StoreError::Database(sqlx::Error::Database(e)))
                                if e.constraint() == Some("jobs_idempotency") =>
                            {
                                raced = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if raced {
                        // A key taken by a request racing across the month boundary spoils
                        // the transaction: admit the jobs one at a time instead.
                        tx.rollback().await?;
                        let mut jobs: Vec<Option<_>> = jobs.into_iter().map(Some).collect();
                        for &i in &order {
                            if let Some((job, limit)) = jobs[i].take() {
                                out[i] = Some(self.admit(job, period_start, limit, actor).await?);
                            }
                        }
                    } else {
                        tx.commit().await?;
                    }
                    Ok(out.into_iter().flatten().collect())
                }

                async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
                    on_conn!(self, jobs::get, id)
                }

                async fn jobs(&self, f: &crate::JobFilter) -> Result<Vec<JobRecord>> {
                    on_conn!(self, jobs::list, f)
                }

                async fn job_page(
                    &self,
                    f: &crate::JobFilter,
                    max_bytes: u64,
                ) -> Result<crate::JobPage> {
                    on_conn!(self, jobs::page, f, max_bytes)
                }

                async fn cancel(
                    &self,
                    id: &str,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<Option<JobRecord>> {
                    let done: Option<JobRecord> =
                        in_tx!(self.$begin, jobs::cancel, id, now, actor)?;
                    match done {
                        Some(job) => Ok(Some(job)),
                        // Not queued or running: as it is.
                        None => self.job(id).await,
                    }
                }

                async fn queue_counts(
                    &self,
                    now: Millis,
                ) -> Result<Vec<(String, crate::QueueCounts)>> {
                    on_conn!(self, jobs::queue_counts, now)
                }

                async fn next_due(&self, tenant: &str, now: Millis) -> Result<Option<Millis>> {
                    on_conn!(self, jobs::next_due, tenant, now)
                }

                async fn put_schedule(
                    &self,
                    s: &crate::NewSchedule,
                    actor: &Actor,
                ) -> Result<(ScheduleRecord, bool)> {
                    in_tx!(self.$begin, schedules::put, s, actor)
                }

                async fn schedule(
                    &self,
                    tenant: &str,
                    name: &str,
                ) -> Result<Option<ScheduleRecord>> {
                    on_conn!(self, schedules::get, tenant, name)
                }

                async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
                    on_conn!(self, schedules::list, tenant)
                }

                async fn delete_schedule(
                    &self,
                    tenant: &str,
                    name: &str,
                    now: Millis,
                    actor: &Actor,
                ) -> Result<bool> {
                    in_tx!(self.$begin, schedules::delete, tenant, name, now, actor)
                }

                async fn fire_schedule(
                    &self,
                    fire: &crate::ScheduleFire,
                    job: crate::NewJob,
                    period_start: Millis,
                    limit: Option<u64>,
                ) -> Result<Option<Admitted>> {
                    let mut tx = self.$begin().await?;
                    let (tenant, name) = (&fire.tenant, &fire.name);
                    let claim = schedules::claim;
                    if !claim(&mut tx, tenant, name, fire.claimed, fire.next).await? {
                        return Ok(None);
                    }
                    let actor = Actor::system("schedule");
                    let out = jobs::admit_in(&mut tx, &job, period_start, limit, &actor).await?;
                    tx.commit().await?;
                    Ok(Some(out))
                }

                async fn lease(
                    &self,
                    sandbox_id: &str,
                    policy: crate::LeasePolicy,
                    now: Millis,
                ) -> Result<crate::Lease> {
                    // A ready sandbox's lease is one statement where the store has it.
                    if let Some(lease) =
                        on_conn!(self, dispatch::lease_one, sandbox_id, policy, now)?
                    {
                        return Ok(lease);
                    }
                    in_tx!(self.$begin, dispatch::lease, sandbox_id, policy, now)
                }

                async fn heartbeat(
                    &self,
                    job_id: &str,
                    lease_id: &str,
                    ttl_ms: Millis,
                    now: Millis,
                ) -> Result<crate::HeartbeatAnswer> {
                    on_conn!(self, dispatch::heartbeat, job_id, lease_id, ttl_ms, now)
                }

                async fn complete(
                    &self,
                    sandbox_id: &str,
                    job_id: &str,
                    lease_id: &str,
                    finish: crate::Finish,
                    now: Millis,
                ) -> Result<crate::Completed> {
                    let complete = dispatch::complete;
                    in_tx!(
                        self.$begin,
                        complete,
                        sandbox_id,
                        job_id,
                        lease_id,
                        finish,
                        now
                    )
                }

                async fn expire_leases(&self, now: Millis) -> Result<Vec<JobRecord>> {
                    in_tx!(self.$begin, dispatch::expire_leases, now)
                }

                async fn insert_sandbox(&self, s: crate::NewSandbox) -> Result<SandboxRecord> {
                    in_tx!(self.$begin, sandboxes::insert, &s)
                }

                async fn set_provider_id(&self, id: &str, provider_id: &str) -> Result<()> {
                    on_conn!(self, sandboxes::set_provider_id, id, provider_id)
                }
                async fn keep_provider_lease(
                    &self,
                    provider_id: &str,
                    nonce: &str,
                    expires_at: Millis,
                    now: Millis,
                ) -> Result<()> {
                    on_conn!(
                        self,
                        sandboxes::keep_lease,
                        provider_id,
                        nonce,
                        expires_at,
                        now
                    )
                }
                async fn provider_lease(
                    &self,
                    provider_id: &str,
                    now: Millis,
                ) -> Result<Option<(String, Millis)>> {
                    on_conn!(self, sandboxes::provider_lease, provider_id, now)
                }
                async fn forget_provider_lease(&self, provider_id: &str) -> Result<()> {
                    on_conn!(self, sandboxes::forget_lease, provider_id)
                }
                async fn set_sandbox_region(&self, id: &str, region: &str) -> Result<()> {
                    on_conn!(self, sandboxes::set_sandbox_region, id, region)
                }
                async fn sandbox_regions(
                    &self,
                    tenant: Option<&str>,
                ) -> Result<std::collections::HashMap<String, String>> {
                    on_conn!(self, sandboxes::sandbox_regions, tenant)
                }

                async fn transition(
                    &self,
                    id: &str,
                    from: &[SandboxState],
                    to: SandboxState,
                    now: Millis,
                ) -> Result<bool> {
                    in_tx!(self.$begin, sandboxes::transition, id, from, to, now)
                }

                async fn sandbox_down(
                    &self,
                    id: &str,
                    to: SandboxState,
                    now: Millis,
                ) -> Result<Vec<JobRecord>> {
                    in_tx!(self.$begin, sandboxes::down, id, to, now)
                }

                async fn sandbox_unhealthy(
                    &self,
                    id: &str,
                    silent_since: Millis,
                    now: Millis,
                ) -> Result<Option<(SandboxRecord, Vec<JobRecord>)>> {
                    in_tx!(self.$begin, sandboxes::unhealthy, id, silent_since, now)
                }

                async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
                    on_conn!(self, sandboxes::by_id, id)
                }

                async fn sandbox_by_token(
                    &self,
                    token_hash: &str,
                ) -> Result<Option<SandboxRecord>> {
                    on_conn!(self, sandboxes::by_token, token_hash)
                }

                async fn sandboxes(&self, tenant: Option<&str>) -> Result<Vec<SandboxRecord>> {
                    on_conn!(self, sandboxes::list, tenant)
                }

                async fn append_ledger(&self, e: &shoal_metering::LedgerEntry) -> Result<()> {
                    let ctx = Default::default();
                    let record = crate::usage::$backend::record;
                    in_tx!(self.$begin, record, e, &ctx, e.at).map(|_| ())
                }

                async fn ledger(
                    &self,
                    tenant: Option<&str>,
                ) -> Result<Vec<shoal_metering::LedgerEntry>> {
                    on_conn!(self, records::ledger, tenant)
                }

                async fn period_ledger(
                    &self,
                    tenant: &str,
                    from: Millis,
                ) -> Result<Vec<shoal_metering::LedgerEntry>> {
                    on_conn!(self, records::period_ledger, tenant, from)
                }

                async fn finished_jobs(
                    &self,
                    tenant: Option<&str>,
                    from: Millis,
                    to: Millis,
                ) -> Result<Vec<crate::Finished>> {
                    on_conn!(self, records::finished_jobs, tenant, from, to)
                }

                async fn record_event(
                    &self,
                    tenant: Option<&str>,
                    at: Millis,
                    kind: &str,
                    detail: &serde_json::Value,
                ) -> Result<()> {
                    on_conn!(self, records::record_event, tenant, at, kind, detail)
                }

                async fn events(
                    &self,
                    tenant: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<crate::EventRecord>> {
                    on_conn!(self, records::events, tenant, limit)
                }

                async fn append_log(
                    &self,
                    sandbox_id: &str,
                    job_id: &str,
                    lease_id: &str,
                    offset: u64,
                    data: &[u8],
                    max_bytes: u64,
                ) -> Result<crate::LogAppend> {
                    let append = records::append_log;
                    let held = (sandbox_id, job_id, lease_id);
                    in_tx!(self.$begin, append, held, offset, data, max_bytes)
                }

                async fn job_log(
                    &self,
                    job_id: &str,
                    from: u64,
                    limit: usize,
                ) -> Result<crate::LogSlice> {
                    on_conn!(self, records::job_log, job_id, from, limit)
                }
            }
        }

        crate::outbox::impl_outbox!($store, $backend, $begin);
        crate::usage::impl_metering!($store, $backend, $begin);
        crate::audit::impl_audit!($store, $backend, $begin);
        crate::retention::impl_retention!($store, $backend, $begin);
        crate::sizing::impl_sizing!($store, $backend, $begin);
        crate::warm::impl_warm_pool!($store, $backend, $begin);
    };
}
pub(crate) use impl_store;
