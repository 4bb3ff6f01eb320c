//! The transactional outbox: what leaves Shoal is first a row in the `outbox` table, written in
//! the transaction of the state change it reports, so a crash at any instant either keeps both or
//! neither. Webhook event types are fanned out in that same transaction to one delivery row per
//! matching endpoint (an endpoint created later never sees older events, and nothing sits between
//! the two writes for a crash to lose). Delivery rows are leased like jobs; backoff is data in
//! the row (`next_attempt_at`), so it survives restarts.
//!
//! Split by concern: the events and quota signals ([`events`]), webhook endpoints and deliveries
//! ([`webhooks`]), their SQL for both stores (`store`: `$N` placeholders mean the same on SQLite
//! and Postgres, with Postgres adding `FOR UPDATE SKIP LOCKED` to the lease and a
//! committed-transactions guard to cursor reads), and the [`Outbox`] implementation both stores
//! share (`impls`).

mod events;
mod impls;
mod store;
mod webhooks;

pub use events::{OutboxEvent, OutboxRecord, QuotaSignal};
pub(crate) use events::{cursor_record_from_row, event_from_row};
pub(crate) use impls::impl_outbox;
pub(crate) use store::{postgres, sqlite};
pub(crate) use webhooks::delivery_from_row;
pub use webhooks::{
    AttemptOutcome, DeliveryRecord, DeliveryState, EndpointRecord, LeasedDelivery, NewEndpoint,
};

use crate::Result;
use crate::usage::{UsageCursor, UsageEventRecord};
use shoal_core::Millis;

/// The outbox's part of the store. Events that report a state change are written by the
/// store's own methods in that change's transaction (a job's end, a quota signal); to add a new
/// kind (audit records, usage events), write it in its change's transaction with the backend's
/// `append` (`outbox::sqlite::append`, `outbox::postgres::append`), or with [`Outbox::append_events`]
/// when it reports no other write.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Appends events that report no state change of their own, in one transaction, fanning
    /// webhook types out to the matching endpoints. An event whose id is already stored is
    /// skipped (so a deterministic id makes the append idempotent). Returns how many were new.
    async fn append_events(&self, events: &[OutboxEvent]) -> Result<usize>;
    /// Events after `after` whose topic starts with `topic_prefix` (`""`: all), at most
    /// `limit`, each with the cursor just past it: the order and cursor of
    /// [`crate::Metering::usage_events`] (`(txid, seq)` on Postgres, only rows of finished
    /// transactions), so the order is stable and a row never appears behind a cursor already
    /// handed out.
    async fn outbox_after(
        &self,
        topic_prefix: &str,
        after: UsageCursor,
        limit: u32,
    ) -> Result<Vec<UsageEventRecord>>;
    /// Creates a webhook endpoint unless its owner already has `max_per_owner`; `false` then.
    async fn create_endpoint(
        &self,
        e: &NewEndpoint,
        max_per_owner: u32,
        actor: &shoal_core::audit::Actor,
    ) -> Result<bool>;
    /// The endpoint `id`, if it exists.
    async fn endpoint(&self, id: &str) -> Result<Option<EndpointRecord>>;
    /// Endpoints created by `owner`'s key, or every endpoint (`None`), oldest first.
    async fn endpoints(&self, owner: Option<&str>) -> Result<Vec<EndpointRecord>>;
    /// Deletes an endpoint and its deliveries; `false` when there was none.
    async fn delete_endpoint(
        &self,
        id: &str,
        now: Millis,
        actor: &shoal_core::audit::Actor,
    ) -> Result<bool>;
    /// Deliveries to one destination, newest first, below `before_seq` when given.
    async fn deliveries(
        &self,
        destination: &str,
        limit: u32,
        before_seq: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Leases up to `limit` due deliveries for `lease_ms`, counting the attempt; deliveries whose
    /// `max_attempts` were all used (the last lease lapsed) become failed instead. On Postgres
    /// replicas leasing at once skip each other's rows.
    async fn lease_deliveries(
        &self,
        owner: &str,
        limit: u32,
        lease_ms: Millis,
        max_attempts: u32,
        now: Millis,
    ) -> Result<Vec<LeasedDelivery>>;
    /// Records how a leased attempt went; `false` when the lease is no longer the delivery's
    /// (it lapsed and was leased again, or the endpoint was deleted).
    async fn finish_delivery(
        &self,
        d: &LeasedDelivery,
        outcome: &AttemptOutcome,
        now: Millis,
    ) -> Result<bool>;
    /// When the next pending delivery falls due, if any is pending.
    async fn next_delivery_due(&self) -> Result<Option<Millis>>;
}
