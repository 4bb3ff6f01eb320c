//! The SQL both stores share. SQLite and Postgres keep the same tables with the same encodings,
//! and `$N` placeholders mean the same on both, so each statement and each rule (the dead-job
//! rule, the lock order, what a completion records) is written once here, in modules whose
//! `for_backend!` macro instantiates the functions once per database. What really differs (row
//! locks on Postgres against SQLite's single writer, a few functions' names) is in [`dialect`];
//! what differs in more than a word (how a tenant upsert tells an insert, opening a connection)
//! stays in `sqlite.rs` and `postgres.rs`. [`impl_store!`] writes the [`crate::Store`] methods
//! once for both: each opens a transaction (or takes a pooled connection to read) and calls the
//! backend's instance of the shared function.

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
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::Store for $store {
            async fn put_tenant(
                &self,
                id: &str,
                plan: shoal_core::PlanTier,
                overrides: &shoal_core::LimitsPatch,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<(crate::TenantRecord, bool)> {
                let mut tx = self.$begin().await?;
                let (t, created) =
                    crate::$backend::upsert_tenant(&mut tx, id, plan, overrides, now).await?;
                let e = crate::audit::tenant_put(actor, &t, created);
                crate::audit::$backend::record(&mut tx, &e, Some(id)).await?;
                tx.commit().await?;
                Ok((t, created))
            }

            async fn tenant(&self, id: &str) -> crate::Result<Option<crate::TenantRecord>> {
                crate::sql::on_conn!(self, crate::tenants::$backend::get, id)
            }

            async fn tenants(&self) -> crate::Result<Vec<crate::TenantRecord>> {
                crate::sql::on_conn!(self, crate::tenants::$backend::list)
            }

            async fn set_draining(
                &self,
                id: &str,
                draining: bool,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::tenants::$backend::set_draining,
                    id,
                    draining,
                    now,
                    actor
                )
            }

            async fn mark_quota_warned(
                &self,
                id: &str,
                period_start: shoal_core::Millis,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                crate::sql::on_conn!(
                    self,
                    crate::tenants::$backend::mark_quota_warned,
                    id,
                    period_start,
                    now
                )
            }

            async fn add_key(
                &self,
                tenant: &str,
                key_id: &str,
                key_hash: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<()> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::tenants::$backend::add_key,
                    tenant,
                    key_id,
                    key_hash,
                    now,
                    actor
                )
            }

            async fn key_tenant(&self, key_hash: &str) -> crate::Result<Option<String>> {
                crate::sql::on_conn!(self, crate::tenants::$backend::key_tenant, key_hash)
            }

            async fn key(&self, key_hash: &str) -> crate::Result<Option<crate::KeyRecord>> {
                crate::sql::on_conn!(self, crate::tenants::$backend::key, key_hash)
            }

            async fn keys(&self, tenant: &str) -> crate::Result<Vec<crate::KeyRecord>> {
                crate::sql::on_conn!(self, crate::tenants::$backend::keys, tenant)
            }

            async fn revoke_key(
                &self,
                tenant: &str,
                key_id: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::tenants::$backend::revoke_key,
                    tenant,
                    key_id,
                    now,
                    actor
                )
            }

            async fn touch_key(&self, key_id: &str, now: shoal_core::Millis) -> crate::Result<()> {
                crate::sql::on_conn!(self, crate::tenants::$backend::touch_key, key_id, now)
            }

            async fn period_jobs(
                &self,
                tenant: &str,
                period_start: shoal_core::Millis,
            ) -> crate::Result<u64> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::jobs::$backend::period_jobs,
                    tenant,
                    period_start
                )
            }

            async fn admit(
                &self,
                job: crate::NewJob,
                period_start: shoal_core::Millis,
                limit: Option<u64>,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<crate::Admitted> {
                use crate::sql::jobs::$backend as jobs;
                let mut tx = self.$begin().await?;
                let tenant = job.tenant.clone();
                let key = job.idempotency_key.clone().unwrap_or_default();
                match jobs::admit_in(&mut tx, job, period_start, limit, actor).await {
                    // Nothing to keep: the first job stands.
                    Ok(out @ crate::Admitted::Existing(_)) => {
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
                        let first = crate::sql::on_conn!(self, jobs::by_key, &tenant, &key)?;
                        first.map(crate::Admitted::Existing).ok_or_else(|| {
                            crate::rows::corrupt("an idempotency key without its job")
                        })
                    }
                    Err(e) => Err(e),
                }
            }

            async fn job(&self, id: &str) -> crate::Result<Option<crate::JobRecord>> {
                crate::sql::on_conn!(self, crate::sql::jobs::$backend::get, id)
            }

            async fn jobs(&self, f: &crate::JobFilter) -> crate::Result<Vec<crate::JobRecord>> {
                crate::sql::on_conn!(self, crate::sql::jobs::$backend::list, f)
            }

            async fn job_page(
                &self,
                f: &crate::JobFilter,
                max_bytes: u64,
            ) -> crate::Result<crate::JobPage> {
                crate::sql::on_conn!(self, crate::sql::jobs::$backend::page, f, max_bytes)
            }

            async fn cancel(
                &self,
                id: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<Option<crate::JobRecord>> {
                let done: Option<crate::JobRecord> = crate::sql::in_tx!(
                    self.$begin,
                    crate::sql::jobs::$backend::cancel,
                    id,
                    now,
                    actor
                )?;
                match done {
                    Some(job) => Ok(Some(job)),
                    // Not queued or running: as it is.
                    None => self.job(id).await,
                }
            }

            async fn queue_counts(
                &self,
                now: shoal_core::Millis,
            ) -> crate::Result<Vec<(String, crate::QueueCounts)>> {
                crate::sql::on_conn!(self, crate::sql::jobs::$backend::queue_counts, now)
            }

            async fn next_due(
                &self,
                tenant: &str,
                now: shoal_core::Millis,
            ) -> crate::Result<Option<shoal_core::Millis>> {
                crate::sql::on_conn!(self, crate::sql::jobs::$backend::next_due, tenant, now)
            }

            async fn put_schedule(
                &self,
                s: &crate::NewSchedule,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<(crate::ScheduleRecord, bool)> {
                crate::sql::in_tx!(self.$begin, crate::schedules::$backend::put, s, actor)
            }

            async fn schedule(
                &self,
                tenant: &str,
                name: &str,
            ) -> crate::Result<Option<crate::ScheduleRecord>> {
                crate::sql::on_conn!(self, crate::schedules::$backend::get, tenant, name)
            }

            async fn schedules(
                &self,
                tenant: Option<&str>,
            ) -> crate::Result<Vec<crate::ScheduleRecord>> {
                crate::sql::on_conn!(self, crate::schedules::$backend::list, tenant)
            }

            async fn delete_schedule(
                &self,
                tenant: &str,
                name: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::schedules::$backend::delete,
                    tenant,
                    name,
                    now,
                    actor
                )
            }

            async fn fire_schedule(
                &self,
                fire: &crate::ScheduleFire,
                job: crate::NewJob,
                period_start: shoal_core::Millis,
                limit: Option<u64>,
            ) -> crate::Result<Option<crate::Admitted>> {
                let mut tx = self.$begin().await?;
                let (tenant, name) = (&fire.tenant, &fire.name);
                let claim = crate::schedules::$backend::claim;
                if !claim(&mut tx, tenant, name, fire.claimed, fire.next).await? {
                    return Ok(None);
                }
                let actor = shoal_core::audit::Actor::system("schedule");
                let out =
                    crate::sql::jobs::$backend::admit_in(&mut tx, job, period_start, limit, &actor)
                        .await?;
                tx.commit().await?;
                Ok(Some(out))
            }

            async fn lease(
                &self,
                sandbox_id: &str,
                policy: crate::LeasePolicy,
                now: shoal_core::Millis,
            ) -> crate::Result<crate::Lease> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::sql::dispatch::$backend::lease,
                    sandbox_id,
                    policy,
                    now
                )
            }

            async fn heartbeat(
                &self,
                job_id: &str,
                lease_id: &str,
                ttl_ms: shoal_core::Millis,
                now: shoal_core::Millis,
            ) -> crate::Result<crate::HeartbeatAnswer> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::dispatch::$backend::heartbeat,
                    job_id,
                    lease_id,
                    ttl_ms,
                    now
                )
            }

            async fn complete(
                &self,
                sandbox_id: &str,
                job_id: &str,
                lease_id: &str,
                finish: crate::Finish,
                now: shoal_core::Millis,
            ) -> crate::Result<crate::Completed> {
                let complete = crate::sql::dispatch::$backend::complete;
                crate::sql::in_tx!(
                    self.$begin,
                    complete,
                    sandbox_id,
                    job_id,
                    lease_id,
                    finish,
                    now
                )
            }

            async fn expire_leases(
                &self,
                now: shoal_core::Millis,
            ) -> crate::Result<Vec<crate::JobRecord>> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::sql::dispatch::$backend::expire_leases,
                    now
                )
            }

            async fn insert_sandbox(
                &self,
                s: crate::NewSandbox,
            ) -> crate::Result<crate::SandboxRecord> {
                crate::sql::in_tx!(self.$begin, crate::sql::sandboxes::$backend::insert, &s)
            }

            async fn set_provider_id(&self, id: &str, provider_id: &str) -> crate::Result<()> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::sandboxes::$backend::set_provider_id,
                    id,
                    provider_id
                )
            }

            async fn transition(
                &self,
                id: &str,
                from: &[shoal_core::SandboxState],
                to: shoal_core::SandboxState,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::sql::sandboxes::$backend::transition,
                    id,
                    from,
                    to,
                    now
                )
            }

            async fn sandbox_down(
                &self,
                id: &str,
                to: shoal_core::SandboxState,
                now: shoal_core::Millis,
            ) -> crate::Result<Vec<crate::JobRecord>> {
                crate::sql::in_tx!(
                    self.$begin,
                    crate::sql::sandboxes::$backend::down,
                    id,
                    to,
                    now
                )
            }

            async fn sandbox(&self, id: &str) -> crate::Result<Option<crate::SandboxRecord>> {
                crate::sql::on_conn!(self, crate::sql::sandboxes::$backend::by_id, id)
            }

            async fn sandbox_by_token(
                &self,
                token_hash: &str,
            ) -> crate::Result<Option<crate::SandboxRecord>> {
                crate::sql::on_conn!(self, crate::sql::sandboxes::$backend::by_token, token_hash)
            }

            async fn sandboxes(
                &self,
                tenant: Option<&str>,
            ) -> crate::Result<Vec<crate::SandboxRecord>> {
                crate::sql::on_conn!(self, crate::sql::sandboxes::$backend::list, tenant)
            }

            async fn append_ledger(&self, e: &shoal_metering::LedgerEntry) -> crate::Result<()> {
                let ctx = Default::default();
                let record = crate::usage::$backend::record;
                crate::sql::in_tx!(self.$begin, record, e, &ctx, e.at).map(|_| ())
            }

            async fn ledger(
                &self,
                tenant: Option<&str>,
            ) -> crate::Result<Vec<shoal_metering::LedgerEntry>> {
                crate::sql::on_conn!(self, crate::sql::records::$backend::ledger, tenant)
            }

            async fn finished_jobs(
                &self,
                tenant: Option<&str>,
                from: shoal_core::Millis,
                to: shoal_core::Millis,
            ) -> crate::Result<Vec<crate::Finished>> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::records::$backend::finished_jobs,
                    tenant,
                    from,
                    to
                )
            }

            async fn record_event(
                &self,
                tenant: Option<&str>,
                at: shoal_core::Millis,
                kind: &str,
                detail: &serde_json::Value,
            ) -> crate::Result<()> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::records::$backend::record_event,
                    tenant,
                    at,
                    kind,
                    detail
                )
            }

            async fn events(
                &self,
                tenant: Option<&str>,
                limit: u32,
            ) -> crate::Result<Vec<crate::EventRecord>> {
                crate::sql::on_conn!(self, crate::sql::records::$backend::events, tenant, limit)
            }

            async fn append_log(
                &self,
                sandbox_id: &str,
                job_id: &str,
                lease_id: &str,
                offset: u64,
                data: &[u8],
                max_bytes: u64,
            ) -> crate::Result<crate::LogAppend> {
                let append = crate::sql::records::$backend::append_log;
                let held = (sandbox_id, job_id, lease_id);
                crate::sql::in_tx!(self.$begin, append, held, offset, data, max_bytes)
            }

            async fn job_log(
                &self,
                job_id: &str,
                from: u64,
                limit: usize,
            ) -> crate::Result<crate::LogSlice> {
                crate::sql::on_conn!(
                    self,
                    crate::sql::records::$backend::job_log,
                    job_id,
                    from,
                    limit
                )
            }
        }

        crate::outbox::impl_outbox!($store, $backend, $begin);
        crate::usage::impl_metering!($store, $backend, $begin);
        crate::audit::impl_audit!($store, $backend, $begin);
        crate::retention::impl_retention!($store, $backend, $begin);
    };
}
pub(crate) use impl_store;
