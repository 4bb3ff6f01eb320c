//! Usage events: every closed billing interval of a sandbox, cut at each hour boundary, as one
//! CloudEvent 1.0 (structured JSON) with an id derived from the interval itself, so the same
//! interval always has the same id and a billing system can drop repeats. Prices turn an
//! interval's vCPU-seconds and GiB-seconds into a `cost`.

use crate::{Interval, Usage, total};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use shoal_core::Millis;
use std::collections::BTreeMap;

/// The CloudEvents `type` of a usage event.
pub const USAGE_EVENT_TYPE: &str = "dev.shoal.sandbox.usage";
/// The outbox topic usage events are stored under (`usage.*` topics outlive retention).
pub const USAGE_TOPIC: &str = "usage.sandbox";
/// Billing intervals are cut at every multiple of this (UTC hours).
pub const HOUR_MS: Millis = 3_600_000;

/// What one provider charges.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per vCPU and second.
    pub vcpu_second: f64,
    /// Per GiB of memory and second.
    pub gib_second: f64,
}

impl Price {
    /// The cost of `u` at this price, rounded to a billionth of the currency unit.
    pub fn cost(&self, u: &Usage) -> f64 {
        let c = u.vcpu_seconds() * self.vcpu_second + u.gib_seconds() * self.gib_second;
        (c * 1e9).round() / 1e9
    }
}

/// The price list: one currency, a price per provider.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Prices {
    /// The currency every price is in (`USD`, ...).
    pub currency: String,
    /// The price of each provider, by provider name.
    pub providers: BTreeMap<String, Price>,
}

impl Prices {
    /// The cost of `u` on `provider`; `None` when that provider has no price.
    pub fn cost(&self, provider: &str, u: &Usage) -> Option<f64> {
        self.providers.get(provider).map(|p| p.cost(u))
    }
}

/// What rendering a usage event needs besides the interval: the CloudEvents `source` and prices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageContext {
    /// The CloudEvents `source` (empty: [`UsageContext::DEFAULT_SOURCE`]).
    pub source: String,
    /// The prices each event's cost is computed from.
    pub prices: Prices,
}

impl UsageContext {
    /// The `source` used when none is configured.
    pub const DEFAULT_SOURCE: &'static str = "shoal";

    /// The `source` to write: the configured one or the default.
    pub fn source(&self) -> &str {
        if self.source.is_empty() {
            Self::DEFAULT_SOURCE
        } else {
            &self.source
        }
    }
}

/// A closed billing interval: `[from, to)` of one sandbox, never across an hour boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The sandbox billed.
    pub sandbox: String,
    /// The tenant billed.
    pub tenant: String,
    /// The provider it ran on (which price applies).
    pub provider: String,
    /// The interval's start (inclusive).
    pub from: Millis,
    /// The interval's end (exclusive).
    pub to: Millis,
    /// The sandbox's CPUs in thousandths.
    pub cpus_milli: u64,
    /// The sandbox's memory in MiB.
    pub memory_mb: u64,
}

impl Closed {
    /// The exact usage of this interval.
    pub fn usage(&self) -> Usage {
        total(
            &[Interval {
                sandbox_id: self.sandbox.clone(),
                tenant: self.tenant.clone(),
                start: self.from,
                end: self.to,
                cpus_milli: self.cpus_milli,
                memory_mb: self.memory_mb,
            }],
            self.from,
            self.to,
        )
    }
}

/// `[from, to)` split at every hour boundary inside it; empty when `to <= from`.
pub fn hour_pieces(from: Millis, to: Millis) -> Vec<(Millis, Millis)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let end = t
            .div_euclid(HOUR_MS)
            .saturating_add(1)
            .saturating_mul(HOUR_MS)
            .min(to);
        if end <= t {
            break;
        }
        out.push((t, end));
        t = end;
    }
    out
}

/// The id of the usage event of `[from, to)` of `sandbox`: the same interval, the same id.
pub fn usage_event_id(sandbox: &str, from: Millis, to: Millis) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("usage/{sandbox}/{from}/{to}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("usg_{hex}")
}

fn rfc3339(t: Millis) -> String {
    Utc.timestamp_millis_opt(t)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The CloudEvent of a closed interval. `cost` (and `currency`) are there when the interval's
/// provider has a price.
pub fn interval_event(ctx: &UsageContext, c: &Closed) -> serde_json::Value {
    let u = c.usage();
    let mut data = serde_json::json!({
        "tenant": c.tenant,
        "sandbox": c.sandbox,
        "provider": c.provider,
        "from": rfc3339(c.from),
        "to": rfc3339(c.to),
        "seconds": u.sandbox_seconds(),
        "vcpu_seconds": u.vcpu_seconds(),
        "gib_seconds": u.gib_seconds(),
    });
    if let Some(cost) = ctx.prices.cost(&c.provider, &u) {
        data["cost"] = serde_json::json!(cost);
        data["currency"] = serde_json::json!(ctx.prices.currency);
    }
    serde_json::json!({
        "specversion": "1.0",
        "type": USAGE_EVENT_TYPE,
        "source": ctx.source(),
        "id": usage_event_id(&c.sandbox, c.from, c.to),
        "subject": c.tenant,
        "time": rfc3339(c.to),
        "datacontenttype": "application/json",
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_cut_at_every_hour() {
        let h = HOUR_MS;
        assert_eq!(hour_pieces(5, 5), vec![]);
        assert_eq!(hour_pieces(10, 5), vec![]);
        assert_eq!(hour_pieces(h - 10, h + 10), vec![(h - 10, h), (h, h + 10)]);
        assert_eq!(
            hour_pieces(0, 3 * h),
            vec![(0, h), (h, 2 * h), (2 * h, 3 * h)]
        );
        assert_eq!(hour_pieces(-10, 10), vec![(-10, 0), (0, 10)]);
    }

    #[test]
    fn an_event_is_the_interval_and_its_cost() {
        let c = Closed {
            sandbox: "sb".into(),
            tenant: "acme".into(),
            provider: "fly".into(),
            from: 0,
            to: 1_000,
            cpus_milli: 2_000,
            memory_mb: 1_024,
        };
        let mut ctx = UsageContext::default();
        let bare = interval_event(&ctx, &c);
        assert!(bare["data"].get("cost").is_none());
        assert_eq!(bare["id"], usage_event_id("sb", 0, 1_000));
        assert_ne!(bare["id"], usage_event_id("sb", 0, 1_001));
        ctx.prices.currency = "USD".into();
        ctx.prices.providers.insert(
            "fly".into(),
            Price {
                vcpu_second: 0.5,
                gib_second: 0.25,
            },
        );
        let ev = interval_event(&ctx, &c);
        assert_eq!(ev["type"], USAGE_EVENT_TYPE);
        assert_eq!(ev["subject"], "acme");
        assert_eq!(ev["time"], "1970-01-01T00:00:01.000Z");
        assert_eq!(ev["data"]["seconds"], 1.0);
        assert_eq!(ev["data"]["vcpu_seconds"], 2.0);
        assert_eq!(ev["data"]["gib_seconds"], 1.0);
        assert_eq!(ev["data"]["cost"], 1.25);
        assert_eq!(ev["data"]["currency"], "USD");
        assert_eq!(ev["id"], bare["id"], "the price is data, not identity");
    }
}
