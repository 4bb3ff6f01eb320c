//! Tenants on the cluster: each tenant's namespace with its role, network policy and quota,
//! made on first use, kept in line with the tenant's limits, and collected when unknown.

use super::*;

impl KubernetesProvider {
    /// Tells the provider a tenant's plan limits; its ResourceQuota mirrors them from now on
    /// (updated at once when its namespace exists).
    pub async fn set_tenant_limits(
        &self,
        tenant: &str,
        limits: TenantLimits,
    ) -> Result<(), ProviderError> {
        let changed = self
            .inner
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), limits.clone())
            != Some(limits);
        let ready = self
            .inner
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant);
        if changed && ready {
            self.inner.apply_quota(tenant).await?;
        }
        Ok(())
    }

    /// Deletes the tenant namespaces (found by label) of tenants `is_known` does not recognise;
    /// answers the namespaces deleted.
    pub async fn collect_unknown_namespaces(
        &self,
        is_known: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<String>, ProviderError> {
        let api: Api<Namespace> = Api::all(self.inner.client.clone());
        let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        let list = api.list(&lp).await.map_err(to_provider_error)?;
        let mut removed = Vec::new();
        for ns in list.items {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            if !self.inner.ours(&ns.metadata, &name) || ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tenant = ns
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(objects::ANNOTATION_TENANT))
                .or_else(|| {
                    ns.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_TENANT))
                })
                .cloned()
                .unwrap_or_default();
            if is_known(&tenant) {
                continue;
            }
            tracing::warn!(namespace = %name, tenant = %tenant, "kubernetes: collecting an unknown tenant's namespace");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => {}
                Err(e) => return Err(to_provider_error(e)),
            }
            self.inner
                .tenants_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&tenant);
            removed.push(name);
        }
        Ok(removed)
    }
}

impl Inner {
    pub(super) fn limits_for(&self, tenant: &str) -> TenantLimits {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or(TenantLimits {
                max_sandboxes: self.cfg.quota.default_max_sandboxes,
                size: SandboxSize::default(),
            })
    }

    pub(super) async fn apply_quota(&self, tenant: &str) -> Result<(), ProviderError> {
        let ns = self.cfg.namespace_for(tenant);
        let quota = objects::resource_quota(&self.cfg, tenant, &self.limits_for(tenant));
        upsert(
            &Api::<ResourceQuota>::namespaced(self.client.clone(), &ns),
            &quota,
        )
        .await
    }

    /// The tenant's namespace, NetworkPolicy and ResourceQuota, made once per tenant per run.
    pub(super) async fn ensure_tenant(
        &self,
        tenant: &str,
        size: &SandboxSize,
    ) -> Result<String, ProviderError> {
        let ns = self.cfg.namespace_for(tenant);
        if self
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(ns);
        }
        let _one = self.setup.lock().await;
        if self
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(ns);
        }
        {
            // Without limits from the scheduler, the quota counts sandboxes of the size in use.
            let mut l = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            l.entry(tenant.to_string()).or_insert(TenantLimits {
                max_sandboxes: self.cfg.quota.default_max_sandboxes,
                size: *size,
            });
        }
        if self.cfg.create_namespaces {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let obj = objects::namespace(&self.cfg, tenant);
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 409) => {}
                Err(e) => return Err(to_provider_error(e)),
            }
        }
        if let Some(role) = &self.cfg.tenant_role {
            create_if_missing(
                &Api::<RoleBinding>::namespaced(self.client.clone(), &ns),
                &objects::tenant_role_binding(&self.cfg, tenant, role),
            )
            .await?;
        }
        // A RoleBinding just made can take a moment to reach the API server's authorizer.
        let policy = objects::network_policy(&self.cfg, tenant);
        let policies = Api::<NetworkPolicy>::namespaced(self.client.clone(), &ns);
        let mut tries = 0;
        loop {
            match upsert(&policies, &policy).await {
                Err(ProviderError::Permanent(m))
                    if self.cfg.tenant_role.is_some() && m.contains("(403)") && tries < 20 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        }
        self.apply_quota(tenant).await?;
        self.tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string());
        Ok(ns)
    }
}
