//! Cron schedules' storage: the rows, their audit records and the claim of a fire time. The cron
//! arithmetic is the caller's (the scheduler computes each next fire time); the store guarantees
//! that one fire time is claimed once: [`sqlite::claim`] / [`postgres::claim`] move
//! `next_fire_at` on only from the value the caller read, and the job the claim admits carries
//! the schedule and the fire time as its idempotency key, in the same transaction.

use crate::rows::{SCHEDULE_COLS, schedule_from_row};
use crate::{NewSchedule, Result, ScheduleRecord};
use shoal_core::Millis;
use shoal_core::audit::{Actor, AuditEntry};

/// The idempotency key of the job a schedule makes for one fire time.
pub fn fire_key(name: &str, fire_at: Millis) -> String {
    format!("schedule:{name}:{fire_at}")
}

/// `schedule.create` or `schedule.update`.
pub fn put_entry(actor: &Actor, s: &ScheduleRecord, created: bool) -> AuditEntry {
    let action = if created {
        "schedule.create"
    } else {
        "schedule.update"
    };
    // The job's spec is not recorded: it may carry the tenant's secrets.
    let detail = serde_json::json!({
        "tenant": s.tenant,
        "cron": s.cron,
        "timezone": s.timezone,
        "kind": s.job.to_value().get("kind"),
    });
    crate::audit::entry(
        actor,
        action,
        format!("schedule/{}/{}", s.tenant, s.name),
        detail,
        s.updated_at,
    )
}

/// `schedule.delete`.
pub fn delete_entry(actor: &Actor, tenant: &str, name: &str, now: Millis) -> AuditEntry {
    crate::audit::entry(
        actor,
        "schedule.delete",
        format!("schedule/{tenant}/{name}"),
        serde_json::json!({ "tenant": tenant }),
        now,
    )
}

/// The schedules' SQL for one backend (`$N` placeholders serve both).
macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        pub(crate) async fn put(
            conn: &mut Conn,
            s: &NewSchedule,
            actor: &Actor,
        ) -> Result<(ScheduleRecord, bool)> {
            let existed = sqlx::query("SELECT 1 AS one FROM schedules WHERE tenant = $1 AND name = $2")
                .bind(&s.tenant)
                .bind(&s.name)
                .fetch_optional(&mut *conn)
                .await?
                .is_some();
            sqlx::query(
                "INSERT INTO schedules (tenant, name, cron, timezone, job, next_fire_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (tenant, name) DO UPDATE SET \
                 cron = excluded.cron, timezone = excluded.timezone, job = excluded.job, \
                 next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at",
            )
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(s.job.get())
            .bind(s.next_fire_at)
            .bind(s.now)
            .execute(&mut *conn)
            .await?;
            let rec = get(conn, &s.tenant, &s.name)
                .await?
                .ok_or_else(|| crate::rows::corrupt("stored schedule vanished"))?;
            crate::audit::$backend::record(conn, &put_entry(actor, &rec, !existed), Some(&s.tenant))
                .await?;
            Ok((rec, !existed))
        }

        pub(crate) async fn get(
            conn: &mut Conn,
            tenant: &str,
            name: &str,
        ) -> Result<Option<ScheduleRecord>> {
            let row = sqlx::query(sql!(
                "SELECT ",
                SCHEDULE_COLS,
                " FROM schedules WHERE tenant = $1 AND name = $2"
            ))
            .bind(tenant)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(schedule_from_row).transpose()
        }

        pub(crate) async fn list(
            conn: &mut Conn,
            tenant: Option<&str>,
        ) -> Result<Vec<ScheduleRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                SCHEDULE_COLS,
                " FROM schedules WHERE ($1 IS NULL OR tenant = $1) ORDER BY tenant, name"
            ))
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(schedule_from_row).collect()
        }

        pub(crate) async fn delete(
            conn: &mut Conn,
            tenant: &str,
            name: &str,
            now: Millis,
            actor: &Actor,
        ) -> Result<bool> {
            let r = sqlx::query("DELETE FROM schedules WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *conn)
                .await?;
            let gone = r.rows_affected() == 1;
            if gone {
                crate::audit::$backend::record(
                    conn,
                    &delete_entry(actor, tenant, name, now),
                    Some(tenant),
                )
                .await?;
            }
            Ok(gone)
        }

        /// Claims the fire time `fire_at`: moves `next_fire_at` to `next` if it is still
        /// `fire_at`; `true` when this transaction claimed it.
        pub(crate) async fn claim(
            conn: &mut Conn,
            tenant: &str,
            name: &str,
            fire_at: Millis,
            next: Option<Millis>,
        ) -> Result<bool> {
            let r = sqlx::query(sql!(
                "UPDATE schedules SET next_fire_at = $1, last_fire_at = $2 \
                 WHERE tenant = $3 AND name = $4 AND next_fire_at = $2"
            ))
            .bind(next)
            .bind(fire_at)
            .bind(tenant)
            .bind(name)
            .execute(&mut *conn)
            .await?;
            Ok(r.rows_affected() == 1)
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
