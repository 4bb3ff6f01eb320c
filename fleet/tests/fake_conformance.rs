//! The testkit's recording fake provider through the shared conformance suite: the fake other
//! crates' tests drive (the scheduler's control loop) keeps the same contract as the real
//! providers (the `process` provider, the default, runs the suite in `process_conformance.rs`).

use shoal_fleet::conformance::{self, SuiteConfig};
use shoal_fleet::{Capabilities, Provider};
use shoal_testkit::fake_provider::FakeProvider;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

fn suite(tenant: &str) -> SuiteConfig {
    SuiteConfig {
        scheduler_url: "http://127.0.0.1:9".into(),
        timeout: Duration::from_secs(5),
        tenant: tenant.into(),
    }
}

#[tokio::test]
async fn the_fake_provider_passes_the_conformance_suite() {
    let (tx, mut rx) = unbounded_channel();
    let p = FakeProvider::new(tx);
    conformance::run(&p, &mut rx, &suite("fake"))
        .await
        .expect("conformance");
    // The suite's every call was recorded, in order: leaving out its `list`s, it began with a
    // create and ended by destroying the last of its sandboxes.
    let ops: Vec<_> = p
        .calls()
        .iter()
        .map(|c| c.op)
        .filter(|op| *op != "list")
        .collect();
    assert_eq!(ops.first(), Some(&"create"), "{ops:?}");
    assert_eq!(ops.last(), Some(&"destroy"), "{ops:?}");
    assert!(
        p.calls_of("suspend").len() >= 2 && p.calls_of("start").len() >= 2,
        "{ops:?}"
    );
}

#[tokio::test]
async fn a_fake_that_cannot_suspend_passes_the_suite_without_suspending() {
    let (tx, mut rx) = unbounded_channel();
    let p = FakeProvider::new(tx).with_capabilities(Capabilities {
        suspend: false,
        stop: true,
    });
    conformance::run(&p, &mut rx, &suite("fake-nosuspend"))
        .await
        .expect("conformance");
    assert!(p.calls_of("suspend").is_empty());
    assert!(!p.capabilities().suspend);
}
