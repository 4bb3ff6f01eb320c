//! The analysis job kinds end to end: `semantic_diff` and `flaky_analysis` jobs run through
//! `shoal serve` and the agent in a sandbox, with results in the contract's shape; and the same
//! engines as `shoal-agent semdiff` / `shoal-agent flaky` locally, with diff(1)-like exit codes.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn fixture(krate: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("crates")
        .join(krate)
        .join("tests/fixtures")
        .join(name)
}

async fn run(s: &Server, body: Value) -> Result<Value> {
    let (st, v) = s.send(Method::POST, "/v1/jobs", &body).await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let id = v["id"].as_str().unwrap().to_string();
    s.wait_for("the job", Duration::from_secs(60), || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        Ok(matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(j))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_kinds_run_as_jobs() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/qa", &json!({"plan": "team"}))
        .await?;

    // A semantic diff that ignores ids and timestamps and compares a list as a multiset.
    let baseline = json!({"id": "run-1", "at": "2026-01-01T00:00:00Z", "items": [{"name": "a", "v": 1}, {"name": "b", "v": 2}], "score": 0.5});
    let candidate = json!({"id": "run-2", "at": "2026-02-01T00:00:00Z", "items": [{"name": "b", "v": 2}, {"name": "a", "v": 1}], "score": 0.75});
    let j = run(
        &s,
        json!({"tenant": "qa", "kind": "semantic_diff", "spec": {"baseline": baseline, "candidate": candidate, "options": {"ignore_keys": ["id", "at"], "unordered_arrays": true}}}),
    )
    .await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["equal"], false);
    let changes = j["result"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0]["op"].as_str(), changes[0]["path"].as_str()),
        (Some("changed"), Some("/score"))
    );
    assert_eq!(
        (changes[0]["before"].as_f64(), changes[0]["after"].as_f64()),
        (Some(0.5), Some(0.75))
    );

    // Numbers beyond a double go through as written (issue 19 item 2): the spec's documents
    // reach the engine as the request wrote them, and the result comes back in the job view with
    // `before`/`after` exactly as written, however many digits.
    let body = r#"{"tenant": "qa", "kind": "semantic_diff", "spec": {"baseline": {"a": 12345678901234567890123, "b": [-59.879722999999956, 1.50], "c": 18446744073709551616},
        "candidate": {"a": 12345678901234567890124, "b": [-59.87972299999995, 1.5], "c": 18446744073709551616.0}, "options": {"max_changes": 10.0}}}"#;
    let r = s
        .req(Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 202, "{}", r.text().await?);
    let id = r.json::<Value>().await?["id"].as_str().unwrap().to_string();
    let text = s
        .wait_for("the exact job", Duration::from_secs(60), || async {
            let text = s
                .req(Method::GET, &format!("/v1/jobs/{id}"))
                .send()
                .await?
                .text()
                .await?;
            let j: Value = serde_json::from_str(&text)?;
            Ok(
                matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead"))
                    .then_some(text),
            )
        })
        .await?;
    assert!(text.contains(r#""state":"succeeded""#), "{text}");
    assert!(
        text.contains(r#""changes":[{"op":"changed","path":"/a","before":12345678901234567890123,"after":12345678901234567890124},{"op":"changed","path":"/b/0","before":-59.879722999999956,"after":-59.87972299999995}]"#),
        "{text}"
    );

    // The same through a schedule: the job it stores and each fire's documents keep the numbers
    // as written.
    let body = r#"{"cron": "* * * * * *", "job": {"kind": "semantic_diff", "spec": {"baseline": {"a": 12345678901234567890123},
        "candidate": {"a": 12345678901234567890124}}}}"#;
    let r = s
        .req(Method::PUT, "/v1/schedules/qa/exact")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
    let put = r.text().await?;
    assert!(put.contains("12345678901234567890124"), "{put}");
    let text = s
        .wait_for("a fired exact job", Duration::from_secs(60), || async {
            let list: Value = s
                .req(Method::GET, "/v1/jobs?tenant=qa&state=succeeded&limit=100")
                .send()
                .await?
                .json()
                .await?;
            for j in list["jobs"].as_array().into_iter().flatten() {
                if j["schedule"] == "qa/exact" {
                    let id = j["id"].as_str().unwrap_or_default();
                    let text = s
                        .req(Method::GET, &format!("/v1/jobs/{id}"))
                        .send()
                        .await?
                        .text()
                        .await?;
                    return Ok(Some(text));
                }
            }
            Ok(None)
        })
        .await?;
    assert!(
        text.contains(r#""changes":[{"op":"changed","path":"/a","before":12345678901234567890123,"after":12345678901234567890124}]"#),
        "{text}"
    );
    s.req(Method::DELETE, "/v1/schedules/qa/exact")
        .send()
        .await?;

    // Recorded traces: spans matched by what they are, not by their ids.
    let tb: Value = serde_json::from_str(&std::fs::read_to_string(fixture(
        "semdiff",
        "otlp_checkout_baseline.json",
    ))?)?;
    let tr: Value = serde_json::from_str(&std::fs::read_to_string(fixture(
        "semdiff",
        "otlp_checkout_rerun.json",
    ))?)?;
    let j = run(&s, json!({"tenant": "qa", "kind": "semantic_diff", "spec": {"baseline": tb, "candidate": tr, "options": {"mode": "trace"}}})).await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(
        j["result"]["equal"], true,
        "a rerun with new span ids and times is the same trace: {}",
        j["result"]
    );

    // Flaky analysis over several runs of one commit and a regression.
    let pass = r#"<testsuite name="s" tests="2"><testcase classname="c" name="stable"/><testcase classname="c" name="wobbly"/></testsuite>"#;
    let fail = r#"<testsuite name="s" tests="2"><testcase classname="c" name="stable"/><testcase classname="c" name="wobbly"><failure message="boom"/></testcase></testsuite>"#;
    let runs: Vec<Value> = (0..8)
        .map(|i| json!({"run_id": format!("r{i}"), "commit": format!("c{}", i / 2), "junit_xml": if i % 2 == 0 { fail } else { pass }}))
        .collect();
    let j = run(
        &s,
        json!({"tenant": "qa", "kind": "flaky_analysis", "spec": {"runs": runs}}),
    )
    .await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    let tests = j["result"]["tests"].as_array().unwrap();
    let by_id = |id: &str| {
        tests
            .iter()
            .find(|t| t["id"].as_str().is_some_and(|x| x.ends_with(id)))
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("wobbly")["verdict"], "flaky", "{tests:?}");
    assert_eq!(by_id("stable")["verdict"], "passing");
    let score = by_id("wobbly")["flaky_score"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&score) && score > by_id("stable")["flaky_score"].as_f64().unwrap()
    );
    assert!(
        j["result"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["verdict"] == "flaky")
    );
    Ok(())
}

#[test]
fn local_subcommands_behave_like_diff() -> Result<()> {
    let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
    let dir = std::env::temp_dir().join(format!("shoal-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (a, b, c) = (dir.join("a.json"), dir.join("b.json"), dir.join("c.json"));
    std::fs::write(&a, r#"{"x": 1, "t": "2026-01-01"}"#)?;
    std::fs::write(&b, r#"{"t": "2027-05-05", "x": 1}"#)?;
    std::fs::write(&c, r#"{"x": 2}"#)?;
    let opts = dir.join("opts.json");
    std::fs::write(&opts, r#"{"ignore_keys": ["t"]}"#)?;
    let code = |args: &[&std::ffi::OsStr]| {
        Command::new(&agent).args(args).output().map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        })
    };
    let (eq, _) = code(&[
        "semdiff".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--options".as_ref(),
        opts.as_os_str(),
    ])?;
    assert_eq!(eq, Some(0));
    let (ne, out) = code(&[
        "semdiff".as_ref(),
        a.as_os_str(),
        c.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ])?;
    assert_eq!(ne, Some(1));
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["equal"], false);
    // Numbers beyond a double print as written, in both formats (issue 19 item 2).
    let (big_a, big_b) = (dir.join("big_a.json"), dir.join("big_b.json"));
    std::fs::write(
        &big_a,
        r#"{"n": 12345678901234567890123, "f": -59.879722999999956}"#,
    )?;
    std::fs::write(
        &big_b,
        r#"{"n": 12345678901234567890124, "f": -59.87972299999995}"#,
    )?;
    let (ne, out) = code(&[
        "semdiff".as_ref(),
        big_a.as_os_str(),
        big_b.as_os_str(),
        "--format".as_ref(),
        "text".as_ref(),
    ])?;
    assert_eq!(ne, Some(1));
    assert_eq!(
        out,
        "changed      /f: -59.879722999999956 -> -59.87972299999995\n\
         changed      /n: 12345678901234567890123 -> 12345678901234567890124\n"
    );
    let (_, out) = code(&[
        "semdiff".as_ref(),
        big_a.as_os_str(),
        big_b.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ])?;
    assert!(
        out.contains(r#""before": 12345678901234567890123"#)
            && out.contains(r#""after": -59.87972299999995"#),
        "{out}"
    );
    let (err, _) = code(&[
        "semdiff".as_ref(),
        a.as_os_str(),
        dir.join("missing.json").as_os_str(),
    ])?;
    assert_eq!(err, Some(2));

    let (ok, out) = code(&[
        "flaky".as_ref(),
        fixture("flaky", "surefire-reruns.xml").as_os_str(),
        fixture("flaky", "pytest.xml").as_os_str(),
    ])?;
    assert_eq!(ok, Some(0));
    let v: Value = serde_json::from_str(&out)?;
    assert!(!v["tests"].as_array().unwrap().is_empty());
    // A malformed file is named with its line; the other files are still analysed.
    let (ok, out) = code(&[
        "flaky".as_ref(),
        fixture("flaky", "malformed.xml").as_os_str(),
        fixture("flaky", "pytest.xml").as_os_str(),
    ])?;
    assert_eq!(ok, Some(0));
    let v: Value = serde_json::from_str(&out)?;
    assert!(
        v["errors"][0]["file"]
            .as_str()
            .is_some_and(|f| f.contains("malformed"))
            && v["errors"][0]["line"].as_u64().is_some(),
        "{v}"
    );
    assert!(!v["tests"].as_array().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
