//! Measures one diff of two ~10 MB documents end to end (read, parse, diff): wall time and the
//! process's peak resident memory (Linux `VmHWM`), each way in a fresh process: the compact
//! `Doc` as `shoal-agent semdiff` reads files, and `serde_json::Value` for comparison. Run with
//! `cargo run --release -p shoal-semdiff --example measure`.

use std::time::Instant;

use shoal_semdiff::{Doc, Options, diff, diff_docs};

#[path = "../benches/support/generator.rs"]
mod generator;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 {
        match args[1].as_str() {
            "doc" => measure_doc(&args[2], &args[3]),
            _ => measure_value(&args[2], &args[3]),
        }
        return;
    }
    // Write the inputs, then measure in a fresh process so generation does not count.
    let dir = std::env::temp_dir().join("shoal-semdiff-measure");
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb) = (dir.join("baseline.json"), dir.join("candidate.json"));
    let a = generator::baseline(10 << 20);
    std::fs::write(&pb, generator::candidate(&a, 300).to_string()).unwrap();
    std::fs::write(&pa, a.to_string()).unwrap();
    drop(a);
    for form in ["doc", "value"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(form)
            .arg(&pa)
            .arg(&pb)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The CLI's way: each file read, parsed into a `Doc`, its text dropped; then the diff.
fn measure_doc(pa: &str, pb: &str) {
    let input = std::fs::metadata(pa).unwrap().len() + std::fs::metadata(pb).unwrap().len();
    let before = peak_rss_kib().unwrap_or(0);
    let t0 = Instant::now();
    let read = |p: &str| Doc::parse(&std::fs::read(p).unwrap()).unwrap();
    let a = read(pa);
    let b = read(pb);
    let t1 = Instant::now();
    let after_parse = peak_rss_kib().unwrap_or(0);
    let r = diff_docs(&a, &b, &Options::default()).unwrap();
    let t2 = Instant::now();
    let peak = peak_rss_kib().unwrap_or(0);
    println!(
        "Doc:   input {:.1} MB; read + parse {:?}, diff {:?}, changes {}, degraded {:?}; \
         documents hold {:.1} MB",
        input as f64 / 1e6,
        t1 - t0,
        t2 - t1,
        r.changes.len(),
        r.degraded,
        (a.heap_bytes() + b.heap_bytes()) as f64 / 1e6,
    );
    println!(
        "       peak RSS {:.1} MB at start, {:.1} MB after parsing, {:.1} MB after the diff; \
         peak / input = {:.2}, (peak - start) / input = {:.2}",
        mb(before),
        mb(after_parse),
        mb(peak),
        (peak as f64 * 1024.0) / input as f64,
        ((peak - before) as f64 * 1024.0) / input as f64
    );
}

fn measure_value(pa: &str, pb: &str) {
    let ta = std::fs::read_to_string(pa).unwrap();
    let tb = std::fs::read_to_string(pb).unwrap();
    let input = ta.len() + tb.len();
    let before = peak_rss_kib().unwrap_or(0);
    let t0 = Instant::now();
    let a: serde_json::Value = serde_json::from_str(&ta).unwrap();
    let b: serde_json::Value = serde_json::from_str(&tb).unwrap();
    let t1 = Instant::now();
    let after_parse = peak_rss_kib().unwrap_or(0);
    let r = diff(&a, &b, &Options::default()).unwrap();
    let t2 = Instant::now();
    let peak = peak_rss_kib().unwrap_or(0);
    println!(
        "Value: input {:.1} MB + {:.1} MB; parse {:?}, diff {:?}, changes {}, degraded {:?}",
        ta.len() as f64 / 1e6,
        tb.len() as f64 / 1e6,
        t1 - t0,
        t2 - t1,
        r.changes.len(),
        r.degraded
    );
    println!(
        "       peak RSS: {:.1} MB with the texts read, {:.1} MB after parsing, {:.1} MB after the diff \
         (diff itself: +{:.1} MB); peak / input = {:.2}",
        mb(before),
        mb(after_parse),
        mb(peak),
        mb(peak - after_parse),
        (peak as f64 * 1024.0) / input as f64
    );
}
