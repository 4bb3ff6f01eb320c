//! The writes to tenants and their keys that both stores share (the same SQL with `$N`
//! placeholders, instantiated once per database), each with its audit record in the same
//! transaction. Reads and the tenant upsert (whose "was it created" test differs) stay with
//! each store.

use crate::Result;
use crate::audit::entry;
use shoal_core::Millis;
use shoal_core::audit::Actor;

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;

        type Conn = <$db as sqlx::Database>::Connection;

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
