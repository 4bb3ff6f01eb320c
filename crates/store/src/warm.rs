//! The shared warm pool's blank sandboxes (`blank_sandboxes`): sandboxes that belong to no tenant
//! yet, and the claim that binds one to a tenant for the rest of its life.
//!
//! A blank is a row of its own table, not a `sandboxes` row with a marker: no tenant listing,
//! planner snapshot, usage report or health check ever sees it, so none of them can bill it to a
//! tenant or count it in a tenant's pool. Its agent holds a token derived from its own id (as
//! every sandbox's), which reaches no tenant's jobs while the blank is unclaimed.
//!
//! [`WarmPool::claim_blank`] does, in one transaction: delete the blank (only if it is still
//! there, so two claims of one blank cannot both win), insert it into `sandboxes` under the
//! tenant (same id, same token hash, same provider id), open the tenant's billing at the claim
//! when the blank was running (a stopped blank's billing opens when the provider reports it
//! started, as any start's), and record the operators' event `claim`. Nothing ever moves a
//! sandbox back.

use crate::Result;
use crate::rows::{StoreRow, corrupt};
use shoal_core::{Millis, SandboxState};
use shoal_metering::{LedgerEntry, LedgerKind, UsageContext};

/// A blank sandbox of the shared warm pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlankRecord {
    /// Its sandbox id (kept when it is claimed).
    pub id: String,
    /// `booting`, `ready` or `stopped` ([`BlankState`]).
    pub state: BlankState,
    /// The provider that runs it.
    pub provider: String,
    /// The provider's own id, once the create answered.
    pub provider_id: Option<String>,
    /// Where the provider placed it, when it places by region.
    pub region: Option<String>,
    /// Its size: CPUs in thousandths.
    pub cpus_milli: u64,
    /// Its size: memory in MiB.
    pub memory_mb: u64,
    /// When it entered its state.
    pub since: Millis,
    /// When it was recorded.
    pub created_at: Millis,
}

/// Where a blank sandbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlankState {
    /// Asked of the provider; not claimable yet.
    Booting,
    /// Running, its agent waiting for a claim.
    Ready,
    /// Kept stopped; a claim starts it.
    Stopped,
}

impl BlankState {
    /// Its name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            BlankState::Booting => "booting",
            BlankState::Ready => "ready",
            BlankState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "booting" => Ok(BlankState::Booting),
            "ready" => Ok(BlankState::Ready),
            "stopped" => Ok(BlankState::Stopped),
            other => Err(corrupt(format!("blank sandbox state `{other}`"))),
        }
    }
}

/// A new blank sandbox, recorded before the provider is asked for it.
#[derive(Debug, Clone)]
pub struct NewBlank {
    /// Its sandbox id.
    pub id: String,
    /// The provider asked for it.
    pub provider: String,
    /// The hash of its agent's token.
    pub token_hash: String,
    /// Its size: CPUs in thousandths.
    pub cpus_milli: u64,
    /// Its size: memory in MiB.
    pub memory_mb: u64,
    /// Now.
    pub now: Millis,
}

/// The shared warm pool's side of the store.
#[async_trait::async_trait]
pub trait WarmPool: Send + Sync {
    /// Records a new blank, booting.
    async fn insert_blank(&self, b: NewBlank) -> Result<BlankRecord>;
    /// Every blank (of every provider), oldest first.
    async fn blanks(&self) -> Result<Vec<BlankRecord>>;
    /// The blank whose agent token hashes to `token_hash`.
    async fn blank_by_token(&self, token_hash: &str) -> Result<Option<BlankRecord>>;
    /// Records what the provider said of a blank: its state, and its provider id and region when
    /// known. `false` when the blank is gone (claimed or removed).
    async fn set_blank(
        &self,
        id: &str,
        state: BlankState,
        provider_id: Option<&str>,
        region: Option<&str>,
        now: Millis,
    ) -> Result<bool>;
    /// Forgets a blank (its create failed, the provider lost it, it is being destroyed).
    async fn remove_blank(&self, id: &str) -> Result<bool>;
    /// Binds the blank `id` to `tenant` for good (see the module doc). The claimed sandbox is
    /// `booting` when the blank was running (its agent calls in as the tenant's) and `starting`
    /// when it was stopped (the caller starts it). `None` when the blank is not claimable (gone,
    /// claimed by another, still booting).
    async fn claim_blank(
        &self,
        id: &str,
        tenant: &str,
        ctx: &UsageContext,
        now: Millis,
    ) -> Result<Option<crate::SandboxRecord>>;
}

pub(crate) const BLANK_COLS: &str =
    "id, state, provider, provider_id, region, cpus_milli, memory_mb, since, created_at";

pub(crate) fn blank_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<BlankRecord> {
    Ok(BlankRecord {
        id: row.string("id")?,
        state: BlankState::parse(row.text("state")?)?,
        provider: row.string("provider")?,
        provider_id: row.opt_string("provider_id")?,
        region: row.opt_string("region")?,
        cpus_milli: row.int("cpus_milli")? as u64,
        memory_mb: row.int("memory_mb")? as u64,
        since: row.int("since")?,
        created_at: row.int("created_at")?,
    })
}

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::{SANDBOX_COLS, sandbox_from_row, sql};

        type Conn = <$db as sqlx::Database>::Connection;

        pub(crate) async fn insert(conn: &mut Conn, b: &NewBlank) -> Result<BlankRecord> {
            let row = sqlx::query(sql!(
                "INSERT INTO blank_sandboxes (id, state, provider, token_hash, cpus_milli, \
                 memory_mb, since, created_at) VALUES ($1, 'booting', $2, $3, $4, $5, $6, $6) \
                 RETURNING ",
                BLANK_COLS
            ))
            .bind(&b.id)
            .bind(&b.provider)
            .bind(&b.token_hash)
            .bind(b.cpus_milli as i64)
            .bind(b.memory_mb as i64)
            .bind(b.now)
            .fetch_one(&mut *conn)
            .await?;
            blank_from_row(&row)
        }

        pub(crate) async fn all(conn: &mut Conn) -> Result<Vec<BlankRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                BLANK_COLS,
                " FROM blank_sandboxes ORDER BY created_at, id"
            ))
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(blank_from_row).collect()
        }

        pub(crate) async fn by_token(conn: &mut Conn, token_hash: &str) -> Result<Option<BlankRecord>> {
            let row = sqlx::query(sql!(
                "SELECT ",
                BLANK_COLS,
                " FROM blank_sandboxes WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(blank_from_row).transpose()
        }

        pub(crate) async fn set(
            conn: &mut Conn,
            id: &str,
            state: BlankState,
            provider_id: Option<&str>,
            region: Option<&str>,
            now: Millis,
        ) -> Result<bool> {
            let r = sqlx::query(
                "UPDATE blank_sandboxes SET state = $1, since = $2, \
                 provider_id = COALESCE($3, provider_id), region = COALESCE($4, region) \
                 WHERE id = $5",
            )
            .bind(state.as_str())
            .bind(now)
            .bind(provider_id)
            .bind(region)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            Ok(r.rows_affected() > 0)
        }

        pub(crate) async fn remove(conn: &mut Conn, id: &str) -> Result<bool> {
            let r = sqlx::query("DELETE FROM blank_sandboxes WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected() > 0)
        }

        pub(crate) async fn claim(
            conn: &mut Conn,
            id: &str,
            tenant: &str,
            ctx: &UsageContext,
            now: Millis,
        ) -> Result<Option<crate::SandboxRecord>> {
            // The delete is the claim: of two transactions claiming one blank, one deletes it
            // and the other finds nothing (Postgres makes the second wait for the first).
            let gone: Option<(String, String, String, Option<String>, Option<String>, i64, i64, i64)> =
                sqlx::query_as(
                    "DELETE FROM blank_sandboxes WHERE id = $1 AND state IN ('ready', 'stopped') \
                     RETURNING state, provider, token_hash, provider_id, region, cpus_milli, \
                     memory_mb, created_at",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            let Some((state, provider, token_hash, provider_id, region, cpus, mem, created)) = gone
            else {
                return Ok(None);
            };
            let was = BlankState::parse(&state)?;
            let to = if was == BlankState::Ready {
                SandboxState::Booting
            } else {
                shoal_core::SandboxOp::Start.in_flight()
            };
            let row = sqlx::query(sql!(
                "INSERT INTO sandboxes (id, tenant, state, provider, provider_id, region, token_hash, \
                 cpus_milli, memory_mb, since, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
                SANDBOX_COLS
            ))
            .bind(id)
            .bind(tenant)
            .bind(to.as_str())
            .bind(&provider)
            .bind(&provider_id)
            .bind(&region)
            .bind(&token_hash)
            .bind(cpus)
            .bind(mem)
            .bind(now)
            .bind(created)
            .fetch_one(&mut *conn)
            .await?;
            let sb = sandbox_from_row(&row)?;
            if was == BlankState::Ready {
                // Running already: the tenant pays from the claim on; before it, the fleet did.
                let entry = LedgerEntry {
                    sandbox_id: sb.id.clone(),
                    tenant: tenant.to_string(),
                    at: now,
                    kind: LedgerKind::Running {
                        cpus_milli: sb.cpus_milli,
                        memory_mb: sb.memory_mb,
                    },
                    note: Some(serde_json::json!({"finding": "claim"})),
                };
                crate::usage::$backend::record(conn, &entry, ctx, now).await?;
            }
            let detail = serde_json::json!({
                "sandbox": sb.id,
                "blank_state": was.as_str(),
                "region": sb.region,
            });
            crate::sql::records::$backend::record_event(conn, Some(tenant), now, "claim", &detail)
                .await?;
            Ok(Some(sb))
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}

/// Implements [`WarmPool`] for a store with a `pool` and a writing-transaction method `$begin`.
macro_rules! impl_warm_pool {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::warm::WarmPool for $store {
            async fn insert_blank(
                &self,
                b: crate::warm::NewBlank,
            ) -> crate::Result<crate::warm::BlankRecord> {
                let mut c = self.pool.acquire().await?;
                crate::warm::$backend::insert(&mut c, &b).await
            }

            async fn blanks(&self) -> crate::Result<Vec<crate::warm::BlankRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::warm::$backend::all(&mut c).await
            }

            async fn blank_by_token(
                &self,
                token_hash: &str,
            ) -> crate::Result<Option<crate::warm::BlankRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::warm::$backend::by_token(&mut c, token_hash).await
            }

            async fn set_blank(
                &self,
                id: &str,
                state: crate::warm::BlankState,
                provider_id: Option<&str>,
                region: Option<&str>,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let r = crate::warm::$backend::set(&mut tx, id, state, provider_id, region, now)
                    .await?;
                tx.commit().await?;
                Ok(r)
            }

            async fn remove_blank(&self, id: &str) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let r = crate::warm::$backend::remove(&mut tx, id).await?;
                tx.commit().await?;
                Ok(r)
            }

            async fn claim_blank(
                &self,
                id: &str,
                tenant: &str,
                ctx: &shoal_metering::UsageContext,
                now: shoal_core::Millis,
            ) -> crate::Result<Option<crate::SandboxRecord>> {
                let mut tx = self.$begin().await?;
                let r = crate::warm::$backend::claim(&mut tx, id, tenant, ctx, now).await?;
                tx.commit().await?;
                Ok(r)
            }
        }
    };
}
pub(crate) use impl_warm_pool;
