//! Parsing the JUnit dialects real tools write, and reporting malformed files.

use std::path::PathBuf;

use shoal_flaky::junit::{Outcome, parse};
use shoal_flaky::{Options, Run, analyze};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn summary(name: &str) -> Vec<(String, Outcome, u32, u32)> {
    parse(&fixture(name))
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.outcome, c.failed_attempts, c.passed_attempts))
        .collect()
}

fn s(id: &str, o: Outcome, f: u32, p: u32) -> (String, Outcome, u32, u32) {
    (id.to_string(), o, f, p)
}

#[test]
fn plain_ant_junit() {
    use Outcome::*;
    let c = "com.acme.cart.CartServiceTest";
    assert_eq!(
        summary("ant-junit.xml"),
        vec![
            s(&format!("{c}::addsItem"), Passed, 0, 1),
            s(&format!("{c}::appliesDiscount"), Failed, 1, 0),
            s(&format!("{c}::checksOutWithPayment"), Failed, 1, 0),
            s(&format!("{c}::legacyCoupon"), Skipped, 0, 0),
        ]
    );
    let cases = parse(&fixture("ant-junit.xml")).unwrap();
    assert_eq!(
        cases[1].message.as_deref(),
        Some("expected:<90.0> but was:<100.0>")
    );
}

#[test]
fn surefire_reruns_and_flaky_elements() {
    use Outcome::*;
    let c = "com.acme.orders.OrderRepositoryIT";
    assert_eq!(
        summary("surefire-reruns.xml"),
        vec![
            s(&format!("{c}::savesOrder"), Passed, 0, 1),
            s(&format!("{c}::findsByCustomer"), Passed, 1, 1),
            s(&format!("{c}::deletesOrder"), Failed, 3, 0),
            s(&format!("{c}::countsOrders"), Passed, 2, 1),
        ]
    );
}

#[test]
fn pytest_junitxml() {
    use Outcome::*;
    let got = summary("pytest.xml");
    assert_eq!(
        got,
        vec![
            s("tests.test_api.TestUsers::test_create_user", Passed, 0, 1),
            s(
                "tests.test_api.TestUsers::test_list_users[page=2]",
                Failed,
                1,
                0
            ),
            s("tests.test_api.TestUsers::test_delete_user", Skipped, 0, 0),
            s("tests.test_math::test_add", Passed, 0, 1),
        ]
    );
    let cases = parse(&fixture("pytest.xml")).unwrap();
    assert_eq!(
        cases[1].message.as_deref(),
        Some("AssertionError: assert 500 == 200")
    );
}

#[test]
fn go_junit_report() {
    use Outcome::*;
    let q = "github.com/acme/shoal/internal/queue";
    assert_eq!(
        summary("go-junit-report.xml"),
        vec![
            s(&format!("{q}::TestEnqueue"), Passed, 0, 1),
            s(&format!("{q}::TestLeaseExpiry"), Failed, 1, 0),
            s(&format!("{q}::TestLeaseExpiry/renewal"), Skipped, 0, 0),
            s(
                "github.com/acme/shoal/internal/store::TestOpen",
                Passed,
                0,
                1
            ),
        ]
    );
}

#[test]
fn jest_junit() {
    use Outcome::*;
    let got = summary("jest-junit.xml");
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[1],
        s(
            "Checkout form submits the order::Checkout form submits the order",
            Failed,
            1,
            0
        )
    );
    let cases = parse(&fixture("jest-junit.xml")).unwrap();
    assert!(
        cases[1]
            .message
            .as_deref()
            .unwrap()
            .starts_with("Error: thrown")
    );
}

#[test]
fn malformed_file_names_file_and_line_and_others_still_count() {
    let e = parse(&fixture("malformed.xml")).unwrap_err();
    assert_eq!(e.line, 6, "{e:?}");
    assert!(e.message.contains("testcase"), "{e:?}");
    let runs: Vec<Run> = ["ant-junit.xml", "malformed.xml", "pytest.xml"]
        .iter()
        .map(|f| Run {
            run_id: f.to_string(),
            commit: String::new(),
            started_at: None,
            junit_xml: fixture(f),
        })
        .collect();
    let report = analyze(&runs, &Options::default());
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].file, "malformed.xml");
    assert_eq!(report.errors[0].line, 6);
    assert!(
        report
            .tests
            .iter()
            .any(|t| t.id.starts_with("tests.test_math"))
    );
    assert!(
        report
            .tests
            .iter()
            .any(|t| t.id.starts_with("com.acme.cart"))
    );
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["errors"][0]["file"], "malformed.xml");
    assert_eq!(v["errors"][0]["line"], 6);
}

#[test]
fn garbage_inputs() {
    assert!(
        parse("")
            .unwrap_err()
            .message
            .contains("not a JUnit report")
    );
    assert!(parse("{\"json\": true}").is_err());
    let e = parse("<testsuite>\n<testcase name=\"a\" name=\"b\"/></testsuite>").unwrap_err();
    assert_eq!(e.line, 2, "{e:?}");
}

// Issue 19, item 5: jest-junit writes `classname=""`; it must fall back to the suite name
// like a missing attribute, so tests of different suites do not collide.
#[test]
fn empty_classname_falls_back_to_the_suite() {
    let xml = r#"<testsuites><testsuite name="Cart"><testcase classname="" name="adds"/></testsuite>
<testsuite name="Wishlist"><testcase classname="" name="adds"><failure/></testcase></testsuite></testsuites>"#;
    let ids: Vec<String> = parse(xml).unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        vec!["Cart::adds".to_string(), "Wishlist::adds".to_string()]
    );
    // So a test that never flaked is not called flaky.
    let runs: Vec<Run> = (0..4)
        .map(|i| Run {
            run_id: format!("r{i}"),
            commit: "c1".into(),
            started_at: None,
            junit_xml: xml.into(),
        })
        .collect();
    let r = analyze(&runs, &Options::default());
    assert!(r.failures.iter().all(|f| f.test == "Wishlist::adds"));
    assert!(r.failures.iter().all(|f| f.passed_in_runs.is_empty()));
    let cart = r.tests.iter().find(|t| t.id == "Cart::adds").unwrap();
    assert_eq!(cart.failures, 0);
}

// Issue 19, item 6.
#[test]
fn disabled_status_is_skipped() {
    let cases = parse(r#"<testsuite name="s"><testcase name="a" status="disabled"/><testcase name="b" status="run"/></testsuite>"#).unwrap();
    assert_eq!(cases[0].outcome, Outcome::Skipped);
    assert_eq!((cases[0].failed_attempts, cases[0].passed_attempts), (0, 0));
    assert_eq!(cases[1].outcome, Outcome::Passed);
}

#[test]
fn flaky_failure_message_is_kept() {
    let xml = r#"<testsuite name="s"><testcase classname="k" name="a"><flakyFailure message="Connection reset" type="java.net.SocketException"><stackTrace>at X</stackTrace></flakyFailure></testcase>
<testcase classname="k" name="b"><flakyError message="OOM"/></testcase></testsuite>"#;
    let cases = parse(xml).unwrap();
    assert_eq!(cases[0].message.as_deref(), Some("Connection reset"));
    assert_eq!(cases[1].message.as_deref(), Some("OOM"));
    let r = analyze(
        &[Run {
            run_id: "r1".into(),
            commit: "c1".into(),
            started_at: None,
            junit_xml: xml.into(),
        }],
        &Options::default(),
    );
    let f = r.failures.iter().find(|f| f.test == "k::a").unwrap();
    assert_eq!(f.message.as_deref(), Some("Connection reset"));
}

#[test]
fn one_nameless_testcase_keeps_the_others() {
    let xml = "<testsuite name=\"s\">\n<testcase classname=\"k\" name=\"a\"/>\n<testcase classname=\"k\"><failure/></testcase>\n<testcase classname=\"k\" name=\"\"/>\n<testcase classname=\"k\" name=\"b\"><failure/></testcase>\n</testsuite>";
    let (cases, bad) = shoal_flaky::junit::parse_report(xml).unwrap();
    let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["k::a", "k::b"]);
    assert_eq!(bad.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 4]);
    let r = analyze(
        &[Run {
            run_id: "r1".into(),
            commit: "c1".into(),
            started_at: None,
            junit_xml: xml.into(),
        }],
        &Options::default(),
    );
    assert_eq!(r.tests.len(), 2);
    assert_eq!(r.errors.len(), 2);
    assert_eq!((r.errors[0].file.as_str(), r.errors[0].line), ("r1", 3));
    assert!(r.errors[0].message.contains("without a name"));
}

#[test]
fn same_base_name_gets_different_run_ids() {
    let dir = std::env::temp_dir().join(format!("flaky-base-{}", std::process::id()));
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(
            dir.join(sub).join("TEST-report.xml"),
            "<testsuite name=\"s\"><testcase name=\"t\"/></testsuite>",
        )
        .unwrap();
    }
    let files = vec![
        dir.join("a/TEST-report.xml"),
        dir.join("b/TEST-report.xml"),
        dir.join("a/TEST-report.xml"),
    ];
    let (runs, _) = shoal_flaky::cli::load(&files, None).unwrap();
    let ids: std::collections::HashSet<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        runs[0].run_id.ends_with("a/TEST-report.xml"),
        "{}",
        runs[0].run_id
    );
    // A unique base name stays short.
    let (runs, _) = shoal_flaky::cli::load(&files[..1], None).unwrap();
    assert_eq!(runs[0].run_id, "TEST-report.xml");
    std::fs::remove_dir_all(&dir).ok();
}
