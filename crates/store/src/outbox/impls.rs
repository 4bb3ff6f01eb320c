//! The [`super::Outbox`] methods, written once for both stores: each opens a transaction (or
//! takes a pooled connection to read) and calls the backend's instance of the outbox's SQL.

/// Implements [`Outbox`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_outbox {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::outbox::Outbox for $store {
            async fn append_events(&self, events: &[crate::OutboxEvent]) -> crate::Result<usize> {
                let mut tx = self.$begin().await?;
                let mut n = 0;
                for ev in events {
                    n += usize::from(crate::outbox::$backend::append(&mut tx, ev).await?);
                }
                tx.commit().await?;
                Ok(n)
            }

            async fn outbox_after(
                &self,
                topic_prefix: &str,
                after: crate::usage::UsageCursor,
                limit: u32,
            ) -> crate::Result<Vec<crate::usage::UsageEventRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::after(&mut c, topic_prefix, after, limit).await
            }

            async fn create_endpoint(
                &self,
                e: &crate::NewEndpoint,
                max_per_owner: u32,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let created =
                    crate::outbox::$backend::create_endpoint(&mut tx, e, max_per_owner).await?;
                if created {
                    let a = crate::audit::endpoint_create(actor, e);
                    crate::audit::$backend::record(&mut tx, &a, e.tenant.as_deref()).await?;
                }
                tx.commit().await?;
                Ok(created)
            }

            async fn endpoint(&self, id: &str) -> crate::Result<Option<crate::EndpointRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::endpoint(&mut c, id).await
            }

            async fn endpoints(
                &self,
                owner: Option<&str>,
            ) -> crate::Result<Vec<crate::EndpointRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::endpoints(&mut c, owner).await
            }

            async fn delete_endpoint(
                &self,
                id: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let deleted = crate::outbox::$backend::delete_endpoint(&mut tx, id).await?;
                if deleted {
                    let a = crate::audit::entry(
                        actor,
                        "webhook.delete",
                        format!("webhook/{id}"),
                        serde_json::json!({}),
                        now,
                    );
                    crate::audit::$backend::record(&mut tx, &a, None).await?;
                }
                tx.commit().await?;
                Ok(deleted)
            }

            async fn deliveries(
                &self,
                destination: &str,
                limit: u32,
                before_seq: Option<i64>,
            ) -> crate::Result<Vec<crate::DeliveryRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::deliveries(&mut c, destination, limit, before_seq).await
            }

            async fn lease_deliveries(
                &self,
                owner: &str,
                limit: u32,
                lease_ms: shoal_core::Millis,
                max_attempts: u32,
                now: shoal_core::Millis,
            ) -> crate::Result<Vec<crate::LeasedDelivery>> {
                let mut tx = self.$begin().await?;
                let leased = crate::outbox::$backend::lease(
                    &mut tx,
                    owner,
                    limit,
                    lease_ms,
                    max_attempts,
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok(leased)
            }

            async fn finish_delivery(
                &self,
                d: &crate::LeasedDelivery,
                outcome: &crate::AttemptOutcome,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::finish(&mut c, d, outcome, now).await
            }

            async fn next_delivery_due(&self) -> crate::Result<Option<shoal_core::Millis>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::next_due(&mut c).await
            }
        }
    };
}
pub(crate) use impl_outbox;
