//! The audit log's records and their hash chain: every state-changing call and operator action is
//! a record; each record's hash covers its content and the hash of the record before it, so
//! removing, reordering or editing any record breaks every hash after it. Pure: the store seals
//! records with [`seal`], and `shoal audit verify` checks a whole log with [`verify`].

use crate::Millis;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash the first record chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `admin`, `tenant_key`, `sandbox` or `system`.
    pub kind: String,
    /// The key's id, the sandbox's id, the admin (`admin`) or the system part (`scheduler`);
    /// never a token or a secret.
    pub id: String,
}

impl Actor {
    /// The operator, holding the admin token.
    pub fn admin() -> Self {
        Actor {
            kind: "admin".into(),
            id: "admin".into(),
        }
    }
    /// A tenant, through its API key `key_id`.
    pub fn tenant_key(key_id: &str) -> Self {
        Actor {
            kind: "tenant_key".into(),
            id: key_id.into(),
        }
    }
    /// A sandbox's agent, through its sandbox token.
    pub fn sandbox(sandbox_id: &str) -> Self {
        Actor {
            kind: "sandbox".into(),
            id: sandbox_id.into(),
        }
    }
    /// The scheduler itself; `part` names which loop (`retention`, `control`, ...).
    pub fn system(part: &str) -> Self {
        Actor {
            kind: "system".into(),
            id: part.into(),
        }
    }
}

/// What happened, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened.
    pub at: Millis,
    /// Who did it.
    pub actor: Actor,
    /// A dotted verb: `tenant.put`, `key.create`, `job.enqueue`, `job.cancel`, ...
    pub action: String,
    /// What it was done to: `tenant/acme`, `job/job_...`, `key/key_...`.
    pub target: String,
    /// The change's particulars (never a token or a secret).
    pub detail: serde_json::Value,
}

/// A sealed record of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The record's place in the log, from 1.
    pub seq: u64,
    /// When it happened.
    pub at: Millis,
    /// Who did it.
    pub actor: Actor,
    /// A dotted verb, as in [`AuditEntry::action`].
    pub action: String,
    /// What it was done to, as in [`AuditEntry::target`].
    pub target: String,
    /// The change's particulars, as in [`AuditEntry::detail`].
    pub detail: serde_json::Value,
    /// The hash of the record before (or [`GENESIS`]).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this record's content, hex.
    pub hash: String,
}

/// The hash of a record with these fields.
pub fn record_hash(seq: u64, prev_hash: &str, e: &AuditEntry) -> String {
    // A fixed field order (serde_json keeps struct order; `detail` is hashed as the store keeps
    // it, re-serialized, so key order inside it is the map's own).
    let content = serde_json::json!([
        seq,
        e.at,
        e.actor.kind,
        e.actor.id,
        e.action,
        e.target,
        e.detail
    ]);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(content.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Seals `entry` as record `seq` after a record whose hash is `prev_hash`.
pub fn seal(seq: u64, prev_hash: &str, entry: AuditEntry) -> AuditRecord {
    let hash = record_hash(seq, prev_hash, &entry);
    AuditRecord {
        seq,
        at: entry.at,
        actor: entry.actor,
        action: entry.action,
        target: entry.target,
        detail: entry.detail,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

/// Where a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A record whose hash is not the hash of its content.
    #[error("record {seq}: its hash does not match its content")]
    Tampered {
        /// The record's sequence number.
        seq: u64,
    },
    /// A record whose `prev_hash` is not the hash of the record before it.
    #[error("record {seq}: it does not chain to the record before it")]
    Unlinked {
        /// The record's sequence number.
        seq: u64,
    },
    /// A record whose sequence number is not the one after the record before it.
    #[error("record {seq}: expected sequence number {expected}")]
    Gap {
        /// The record's sequence number.
        seq: u64,
        /// The number it should have had.
        expected: u64,
    },
}

/// Checks `records` (in order, starting anywhere: the first one's `prev_hash` is taken on trust
/// unless it is record 1, which must chain to [`GENESIS`]).
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Result<u64, ChainBreak> {
    let mut prev: Option<&AuditRecord> = None;
    let mut count = 0;
    for r in records {
        match prev {
            None if r.seq == 1 && r.prev_hash != GENESIS => {
                return Err(ChainBreak::Unlinked { seq: r.seq });
            }
            None => {}
            Some(p) => {
                if r.seq != p.seq + 1 {
                    return Err(ChainBreak::Gap {
                        seq: r.seq,
                        expected: p.seq + 1,
                    });
                }
                if r.prev_hash != p.hash {
                    return Err(ChainBreak::Unlinked { seq: r.seq });
                }
            }
        }
        let entry = AuditEntry {
            at: r.at,
            actor: r.actor.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            detail: r.detail.clone(),
        };
        if record_hash(r.seq, &r.prev_hash, &entry) != r.hash {
            return Err(ChainBreak::Tampered { seq: r.seq });
        }
        prev = Some(r);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            at: 1_000 + n as Millis,
            actor: Actor::admin(),
            action: "tenant.put".into(),
            target: format!("tenant/t{n}"),
            detail: serde_json::json!({"plan": "pro", "n": n}),
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
            out.push(seal(i, &prev, entry(i)));
        }
        out
    }

    #[test]
    fn a_sealed_chain_verifies() {
        assert_eq!(verify(&chain(20)), Ok(20));
        assert_eq!(verify(&chain(20)[5..]), Ok(15), "a suffix verifies too");
    }

    #[test]
    fn an_edited_record_breaks_the_chain() {
        let mut c = chain(10);
        c[4].detail = serde_json::json!({"plan": "enterprise"});
        assert_eq!(verify(&c), Err(ChainBreak::Tampered { seq: 5 }));
        let mut c = chain(10);
        c[2].actor = Actor::tenant_key("key_x");
        assert_eq!(verify(&c), Err(ChainBreak::Tampered { seq: 3 }));
    }

    #[test]
    fn a_removed_or_reordered_record_breaks_the_chain() {
        let mut c = chain(10);
        c.remove(3);
        assert_eq!(
            verify(&c),
            Err(ChainBreak::Gap {
                seq: 5,
                expected: 4
            })
        );
        let mut c = chain(10);
        c.swap(2, 3);
        assert!(verify(&c).is_err());
    }

    #[test]
    fn a_rehashed_record_does_not_link_to_the_next() {
        // An attacker who edits record 5 and recomputes its hash still breaks record 6's link.
        let mut c = chain(10);
        let mut e = entry(5);
        e.target = "tenant/forged".into();
        c[4] = seal(5, &c[3].hash.clone(), e);
        assert_eq!(verify(&c), Err(ChainBreak::Unlinked { seq: 6 }));
    }

    #[test]
    fn the_first_record_chains_to_genesis() {
        let mut c = chain(3);
        c[0] = seal(1, "ff", entry(1));
        assert_eq!(verify(&c), Err(ChainBreak::Unlinked { seq: 1 }));
    }
}
