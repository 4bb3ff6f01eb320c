//! Budgets: a tenant's spend this month (its sandboxes' vCPU- and GiB-seconds at the provider's
//! `[prices]`) against `limits.monthly_budget`. The leader sends `budget.warning` at 80% and
//! `budget.exceeded` at 100%, once per month each (an operators' event, an outbox event fanned out
//! to webhooks, in one transaction), and sets `shoal_budget_usage_ratio`; with
//! `on_budget_exceeded = "block"`, admission (`crate::admission::budget`) refuses new jobs with 429
//! `budget_exceeded` from the first admission at or past 100%, never before; a schedule's fire is
//! refused the same way and recorded as `schedule_skipped`.

use crate::state::App;
use shoal_core::{Limits, Millis};
use shoal_metering::{intervals, month_of, total};
use shoal_store::StoreError;

/// The fraction of the budget at which `budget.warning` is sent.
pub const WARNING_AT: f64 = 0.8;

/// What `tenant` has spent this month up to `now`; `None` when the provider has no price.
pub async fn spent(app: &App, tenant: &str, now: Millis) -> Result<Option<f64>, StoreError> {
    let Some(price) = crate::usage::price(app) else {
        return Ok(None);
    };
    let (from, to) = month_of(now);
    // The month's part of the ledger only: its total over the month is the whole ledger's.
    let ledger = app.store.period_ledger(tenant, from).await?;
    let ivs = intervals(&ledger, now);
    Ok(Some(price.cost(&total(&ivs, from, to.min(now)))))
}

/// The signals `spent` of `budget` has reached, in order.
pub fn reached(spent: f64, budget: f64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if spent >= budget * WARNING_AT {
        out.push("budget.warning");
    }
    if spent >= budget {
        out.push("budget.exceeded");
    }
    out
}

/// Whether `limits` block new jobs at `spent`.
pub fn blocks(limits: &Limits, spent: f64) -> bool {
    matches!(limits.on_budget_exceeded, shoal_core::BudgetAction::Block)
        && limits.monthly_budget.is_some_and(|b| spent >= b)
}

/// One pass over every tenant with a budget: the metric and the signals due.
pub async fn check(app: &App, now: Millis) -> Result<(), StoreError> {
    let period = month_of(now);
    for t in app.store.tenants().await? {
        let limits = t.limits();
        let label = app.metrics.tenant(&t.id);
        let Some(budget) = limits.monthly_budget else {
            let _ = app.metrics.budget_usage_ratio.remove_label_values(&[label]);
            continue;
        };
        let Some(spent) = spent(app, &t.id, now).await? else {
            continue;
        };
        if budget > 0.0 {
            app.metrics
                .budget_usage_ratio
                .with_label_values(&[label])
                .set(spent / budget);
        }
        for topic in reached(spent, budget) {
            let payload = serde_json::json!({
                "tenant": t.id,
                "budget": budget,
                "spent": spent,
                "currency": app.cfg.prices.currency,
                "period_start": crate::views::rfc3339(period.0),
                "period_end": crate::views::rfc3339(period.1),
                "blocking": matches!(limits.on_budget_exceeded, shoal_core::BudgetAction::Block),
            });
            if app
                .store
                .budget_signal(&t.id, topic, period.0, &payload, now)
                .await?
            {
                tracing::warn!(tenant = %t.id, spent, budget, signal = topic, "budget signal");
                app.outbox_kick.notify_one();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::{BudgetAction, LimitsPatch, PlanTier};

    #[test]
    fn signals_at_80_and_100_percent_never_before() {
        assert!(reached(79.99, 100.0).is_empty());
        assert_eq!(reached(80.0, 100.0), ["budget.warning"]);
        assert_eq!(reached(100.0, 100.0), ["budget.warning", "budget.exceeded"]);
        let mut l = Limits::resolve(PlanTier::Pro, &LimitsPatch::default());
        l.monthly_budget = Some(10.0);
        assert!(!blocks(&l, 10.0), "notify never blocks");
        l.on_budget_exceeded = BudgetAction::Block;
        assert!(!blocks(&l, 9.999_999));
        assert!(blocks(&l, 10.0));
        l.monthly_budget = None;
        assert!(!blocks(&l, 1e9));
    }
}
