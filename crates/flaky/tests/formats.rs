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
