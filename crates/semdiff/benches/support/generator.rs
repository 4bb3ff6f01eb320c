//! Deterministic generator of large JSON documents for the benchmark and the measurement
//! example: a run log of `n` records, and a candidate with scattered edits.

use serde_json::{Value, json};

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A baseline document of about `target_bytes` of JSON text.
pub fn baseline(target_bytes: usize) -> Value {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    let mut runs = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    while size < target_bytes {
        let r = json!({
            "id": format!("run-{i:08}"),
            "name": format!("job {} of pipeline {}", i % 97, i % 13),
            "started_at": format!("2024-05-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60),
            "duration_ms": (next(&mut s) % 100_000) as f64 / 7.0,
            "ok": !next(&mut s).is_multiple_of(10),
            "tags": ["ci", format!("shard-{}", i % 8), format!("os-{}", ["linux", "mac", "win"][(i % 3) as usize])],
            "metrics": {"cpu": (next(&mut s) % 1000) as f64 / 10.0, "mem_mb": next(&mut s) % 4096, "io": {"read": next(&mut s) % 100_000, "write": next(&mut s) % 100_000}},
            "steps": (0..3).map(|k| json!({"name": format!("step-{k}"), "exit": 0, "log": "ok"})).collect::<Vec<_>>(),
        });
        size += r.to_string().len() + 1;
        runs.push(r);
        i += 1;
    }
    json!({"version": 3, "generated_by": "shoal-bench", "runs": runs})
}

/// The baseline with `edits` scattered edits: changed leaves, a removed and an inserted record.
pub fn candidate(base: &Value, edits: usize) -> Value {
    let mut c = base.clone();
    let runs = c["runs"].as_array_mut().expect("runs");
    let n = runs.len();
    for e in 0..edits {
        let k = (e * 7919 + 13) % n;
        match e % 3 {
            0 => runs[k]["metrics"]["cpu"] = json!(-1.0),
            1 => runs[k]["ok"] = json!("unknown"),
            _ => runs[k]["steps"][1]["exit"] = json!(1),
        }
    }
    runs.remove(n / 2);
    runs.insert(n / 3, json!({"id": "inserted"}));
    c
}
