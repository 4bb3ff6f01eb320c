//! Tenants and their API keys, for both stores (the same SQL with `$N` placeholders,
//! instantiated once per database): the reads, and the writes each with its audit record in the
//! same transaction. Only the tenant upsert, whose "was it created" test differs, stays with each
//! store.

use crate::audit::entry;
use crate::rows::{KEY_COLS, TENANT_COLS, key_from_row, tenant_from_row};
use crate::{KeyRecord, Result, TenantRecord};
use shoal_core::Millis;
use shoal_core::audit::Actor;

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;

        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        /// The tenant `id`.
        pub(crate) async fn get(conn: &mut Conn, id: &str) -> Result<Option<TenantRecord>> {
            let row = sqlx::query(sql!("SELECT ", TENANT_COLS, " FROM tenants WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(tenant_from_row).transpose()
        }

        /// Every tenant, by id.
        pub(crate) async fn list(conn: &mut Conn) -> Result<Vec<TenantRecord>> {
            let rows = sqlx::query(sql!("SELECT ", TENANT_COLS, " FROM tenants ORDER BY id"))
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(tenant_from_row).collect()
        }

        /// Marks the tenant warned for the period starting at `period_start`; `true` only the
        /// first time in that period.
        pub(crate) async fn mark_quota_warned(
            conn: &mut Conn,
            id: &str,
            period_start: Millis,
            now: Millis,
        ) -> Result<bool> {
            let r = sqlx::query(
                "UPDATE tenants SET quota_warned_at = $1 WHERE id = $2 \
                 AND (quota_warned_at IS NULL OR quota_warned_at < $3)",
            )
            .bind(now)
            .bind(id)
            .bind(period_start)
            .execute(&mut *conn)
            .await?;
            Ok(r.rows_affected() == 1)
        }

        /// The tenant of the key with this hash.
        pub(crate) async fn key_tenant(conn: &mut Conn, key_hash: &str) -> Result<Option<String>> {
            Ok(sqlx::query_scalar("SELECT tenant FROM api_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&mut *conn)
                .await?)
        }

        /// The key with this hash.
        pub(crate) async fn key(conn: &mut Conn, key_hash: &str) -> Result<Option<KeyRecord>> {
            let row = sqlx::query(sql!("SELECT ", KEY_COLS, " FROM api_keys WHERE key_hash = $1"))
                .bind(key_hash)
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(key_from_row).transpose()
        }

        /// The tenant's keys, oldest first.
        pub(crate) async fn keys(conn: &mut Conn, tenant: &str) -> Result<Vec<KeyRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                KEY_COLS,
                " FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
            ))
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(key_from_row).collect()
        }

        /// Records that the key was used at `now`.
        pub(crate) async fn touch_key(conn: &mut Conn, key_id: &str, now: Millis) -> Result<()> {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(key_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Drains (or undrains) a tenant; `true` when it exists.
        pub(crate) async fn set_draining(
            conn: &mut Conn,
            id: &str,
            draining: bool,
            now: Millis,
            actor: &Actor,
        ) -> Result<bool> {
            let r = sqlx::query("UPDATE tenants SET draining = $1, updated_at = $2 WHERE id = $3")
                .bind(draining)
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            let action = if draining {
                "tenant.drain"
            } else {
                "tenant.undrain"
            };
            let e = entry(actor, action, format!("tenant/{id}"), serde_json::json!({}), now);
            crate::audit::$backend::record(conn, &e, Some(id)).await?;
            Ok(true)
        }

        pub(crate) async fn add_key(
            conn: &mut Conn,
            tenant: &str,
            key_id: &str,
            key_hash: &str,
            now: Millis,
            actor: &Actor,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO api_keys (id, key_hash, tenant, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(key_id)
            .bind(key_hash)
            .bind(tenant)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            // The key's id only: never the key or its hash.
            let e = entry(
                actor,
                "key.create",
                format!("key/{key_id}"),
                serde_json::json!({ "tenant": tenant }),
                now,
            );
            crate::audit::$backend::record(conn, &e, Some(tenant)).await
        }

        pub(crate) async fn revoke_key(
            conn: &mut Conn,
            tenant: &str,
            key_id: &str,
            now: Millis,
            actor: &Actor,
        ) -> Result<bool> {
            let done = sqlx::query("DELETE FROM api_keys WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(key_id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            let e = entry(
                actor,
                "key.revoke",
                format!("key/{key_id}"),
                serde_json::json!({ "tenant": tenant }),
                now,
            );
            crate::audit::$backend::record(conn, &e, Some(tenant)).await?;
            Ok(true)
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
