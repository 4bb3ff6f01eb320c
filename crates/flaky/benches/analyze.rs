//! Criterion benchmark: analysing 100,000 test results (100 runs x 1,000 tests, JUnit XML
//! parsing included).

use criterion::{Criterion, criterion_group, criterion_main};
use shoal_flaky::sim::{SimConfig, simulate};
use shoal_flaky::{Options, analyze};

fn bench(c: &mut Criterion) {
    let sim = simulate(&SimConfig {
        tests: 1_000,
        commits: 50,
        runs_per_commit: 2,
        seed: 3,
        ..SimConfig::default()
    });
    let results: usize = sim.runs.len() * 1_000;
    assert_eq!(results, 100_000);
    let opts = Options::default();
    let mut g = c.benchmark_group("flaky");
    g.sample_size(10);
    g.bench_function("analyze_100k_results", |b| {
        b.iter(|| analyze(&sim.runs, &opts))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
