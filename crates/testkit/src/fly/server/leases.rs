//! Machine leases: taking, refusing and releasing them, as Fly's lease endpoints do.

use super::*;

impl Shared {
    pub(super) fn lease_conflict(m: &Machine, nonce: Option<&str>) -> Option<Response> {
        let l = m.active_lease()?;
        if nonce == Some(l.nonce.as_str()) {
            return None;
        }
        Some(error(
            409,
            format!(
                "machine {} is leased by {} ({}) until {}; send its nonce in fly-machine-lease-nonce",
                m.id, l.owner, l.description, l.expires_at
            ),
        ))
    }

    pub(super) fn create_lease(&self, id: &str, body: &Value, nonce: Option<&str>) -> Response {
        let ttl = body
            .get("ttl")
            .and_then(Value::as_i64)
            .filter(|t| *t > 0)
            .unwrap_or(30);
        let description = body
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.with_machine(id, |m| {
            if m.state == "destroyed" {
                return error(404, format!("machine {id} not found"));
            }
            let expires_at = now_ms() / 1000 + ttl;
            if let Some(l) = m.active_lease() {
                if nonce != Some(l.nonce.as_str()) {
                    return error(
                        409,
                        format!(
                            "lease currently held by {} ({}) until {}",
                            l.owner, l.description, l.expires_at
                        ),
                    );
                }
                let l = m.lease.as_mut().expect("active lease");
                l.expires_at = expires_at;
                return answer(201, Machine::lease_json(l, true));
            }
            let l = Lease {
                nonce: random_id(12, HEX),
                expires_at,
                owner: "shoal@emulator.test".into(),
                description,
            };
            let out = Machine::lease_json(&l, true);
            m.lease = Some(l);
            answer(201, out)
        })
    }

    pub(super) fn release_lease(&self, id: &str, nonce: Option<&str>) -> Response {
        self.with_machine(id, |m| match m.active_lease() {
            None => answer(200, json!({})),
            Some(l) if nonce == Some(l.nonce.as_str()) => {
                m.lease = None;
                answer(200, json!({}))
            }
            Some(l) => error(409, format!("lease held by {} with another nonce", l.owner)),
        })
    }
}
