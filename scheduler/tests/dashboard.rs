//! The dashboard in headless Chromium (Debian's `chromium`) against the real scheduler: it signs
//! in through `/?token=`, follows the pools live (server-sent events, no reload) while jobs run,
//! shows the 80% quota warning, drains a tenant and cancels a job from the page, shows a job's
//! output live on its own page (reached from the tenant's job list) while it runs, and takes
//! screenshots (written to `docs/` with `SHOAL_UPDATE_SCREENSHOTS=1`). Chromium is driven over the DevTools protocol. Under `CI=true` a
//! missing Chromium fails the test instead of skipping it.

use anyhow::{Context, Result, bail};
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::io::BufRead;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(o) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            && o.status.success()
        {
            return Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        }
    }
    None
}

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(bin: &Path) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1440,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting chromium")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(60))
            .context("chromium did not print its DevTools address")?;
        let http = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .context("DevTools address")?
            .to_string();
        let targets: Value = reqwest::get(format!("http://{http}/json/list"))
            .await?
            .json()
            .await?;
        let page = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .context("no page target")?
            .to_string();
        let (ws, _) = tokio::task::block_in_place(|| {
            tungstenite::connect(page.as_str()).map_err(anyhow::Error::from)
        })?;
        Ok(Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        })
    }

    /// One DevTools command; its result.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        tokio::task::block_in_place(|| {
            self.ws.send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))?;
            loop {
                let msg = self.ws.read()?;
                let Ok(text) = msg.to_text() else { continue };
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if v["id"] == id {
                    if v["error"].is_object() {
                        bail!("{method}: {}", v["error"]);
                    }
                    return Ok(v["result"].clone());
                }
            }
        })
    }

    /// Evaluates `expr` in the page; its value.
    fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if r["exceptionDetails"].is_object() {
            bail!("{expr}: {}", r["exceptionDetails"]);
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy (not null, false, 0 or ""); its value.
    async fn wait(&mut self, what: &str, expr: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(expr)?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").unwrap_or_default();
                bail!("timed out waiting for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page at 1440 px wide.
    fn screenshot(&mut self, to: &Path) -> Result<()> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")?
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1440, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("no screenshot data")?)?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn enqueue(s: &Server, tenant: &str, cmd: &str) -> Result<String> {
    s.enqueue_sh(tenant, cmd).await
}

fn cell(tenant: &str, col: &str) -> String {
    format!(
        "(document.querySelector('tr[data-tenant=\"{tenant}\"] [data-col=\"{col}\"]') || {{}}).textContent"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_the_pools_drains_and_cancels_in_chromium() -> Result<()> {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is required under CI=true (apt-get install chromium)"
        );
        eprintln!("chromium not found: skipping the browser test (apt-get install chromium)");
        return Ok(());
    };
    // The screenshots are taken (and checked to be PNGs) on every run, but written over the
    // ones in `docs/` only when asked, so that running the tests leaves the tree as it was.
    let docs = if std::env::var_os("SHOAL_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("workspace")?
            .join("docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
    };
    let s = Server::start(&["--idle-timeout", "30s"], &[]).await?;
    for (t, body) in [
        (
            "acme",
            json!({"plan": "pro", "limits": {"max_sandboxes": 3}}),
        ),
        (
            "globex",
            json!({"plan": "team", "limits": {"jobs_per_month": 5}}),
        ),
        ("initech", json!({"plan": "free"})),
    ] {
        s.send(Method::PUT, &format!("/v1/tenants/{t}"), &body)
            .await?;
    }

    let mut b = Browser::launch(&bin).await?;
    b.call(
        "Page.navigate",
        json!({"url": format!("{}/?token={}", s.url, s.token)}),
    )?;
    b.wait(
        "the live stream",
        "document.querySelector('#live') && document.querySelector('#live').textContent === 'live'",
    )
    .await?;
    // The stream's first overview renders the rows; wait for it rather than race it.
    b.wait("acme's row", &format!("{} === '0'", cell("acme", "active")))
        .await?;
    assert_eq!(
        b.eval("location.pathname")?,
        "/",
        "the token is not left in the URL"
    );
    // A marker that a reload would lose: every change below reaches this same page.
    b.eval("window.__sameDocument = true")?;

    // Work arrives: the page sees acme's pool grow.
    for i in 0..6 {
        enqueue(&s, "acme", &format!("sleep 2; echo {i}")).await?;
    }
    enqueue(&s, "acme", "echo 'no such fixture' >&2; exit 3").await?;
    let grown = b
        .wait(
            "acme's pool to grow",
            &format!(
                "Number({}) > 0 && {}",
                cell("acme", "active"),
                cell("acme", "active")
            ),
        )
        .await?;
    let grown: u64 = grown.as_str().unwrap_or("0").parse()?;
    assert!((1..=3).contains(&grown), "active {grown}");
    // globex passes 80% of its quota: the warning shows.
    for _ in 0..4 {
        enqueue(&s, "globex", "echo quick").await?;
    }
    b.wait(
        "globex's quota warning",
        "document.querySelector('tr[data-tenant=\"globex\"] .quota.warn')",
    )
    .await?;
    let warn = b.eval("document.querySelector('tr[data-tenant=\"globex\"] .quota').textContent")?;
    assert!(
        warn.as_str()
            .is_some_and(|w| w.contains("4 / 5") && w.contains("over 80%")),
        "{warn}"
    );
    // The charts have samples (one every 5 s) and the jobs finished.
    b.wait("two history samples", "S.fleet.length >= 2").await?;
    b.wait(
        "acme's jobs to finish",
        &format!(
            "{} === '6' || {} === '0'",
            cell("acme", "jpm"),
            cell("acme", "queued")
        ),
    )
    .await?;
    b.wait(
        "compute hours in the usage chart",
        "S.usage['*'] && S.usage['*'].total.sandbox_seconds > 0",
    )
    .await?;
    assert_eq!(b.eval("window.__sameDocument")?, true);
    b.screenshot(&docs.join("dashboard.png"))?;

    // Drain acme from the page.
    let long = enqueue(&s, "acme", "sleep 600").await?;
    s.wait_for("the long job to run", Duration::from_secs(60), || async {
        Ok((s.get(&format!("/v1/jobs/{long}")).await?["state"] == "running").then_some(()))
    })
    .await?;
    b.eval(
        "window.confirm = () => true; document.querySelector('button[data-drain=\"acme\"]').click(); true",
    )?;
    b.wait(
        "the drained state on the page",
        &format!("{} === 'draining'", cell("acme", "state")),
    )
    .await?;
    assert_eq!(s.get("/v1/tenants/acme").await?["draining"], true);
    assert_eq!(b.eval("document.querySelector('#err').textContent")?, "");

    // A drained tenant's new job stays queued; cancel it from the tenant's page.
    let (st, sched) = s
        .send(
            Method::PUT,
            "/v1/schedules/acme/hourly",
            &json!({"cron": "0 * * * *", "job": {"kind": "agent", "spec": {"command": ["true"]}}}),
        )
        .await?;
    assert_eq!(st, 201, "{sched}");
    let queued = enqueue(&s, "acme", "echo never").await?;
    b.eval("location.hash = '#/tenant/acme'; true")?;
    let button = format!("button[data-cancel=\"{queued}\"]");
    b.wait(
        "the queued job's cancel button",
        &format!("document.querySelector('{button}')"),
    )
    .await?;
    b.eval(&format!(
        "window.confirm = () => true; document.querySelector('{button}').click(); true"
    ))?;
    s.wait_for(
        "the job to be cancelled",
        Duration::from_secs(30),
        || async {
            Ok((s.get(&format!("/v1/jobs/{queued}")).await?["state"] == "cancelled").then_some(()))
        },
    )
    .await?;
    b.wait(
        "the cancelled job on the page",
        &format!(
            "(document.querySelector('tr[data-job=\"{queued}\"] .badge') || {{}}).textContent === 'cancelled'"
        ),
    )
    .await?;
    // The tenant page lists its schedules with their next fire time.
    let next = b
        .wait(
            "the schedule with its next fire time",
            "(document.querySelector('#schedules tr[data-schedule=\"hourly\"] [data-col=\"next\"] time') || {}).title",
        )
        .await?;
    assert_eq!(next, sched["next_fire_at"]);
    // The tenant page lists sandboxes with their state and age, and the scaling timeline.
    b.wait(
        "sandboxes and the timeline",
        "document.querySelectorAll('#sandboxes tr[data-sandbox]').length > 0 && document.querySelectorAll('#timeline li .badge').length > 0",
    )
    .await?;
    let kinds =
        b.eval("[...document.querySelectorAll('#timeline li .badge')].map(e => e.textContent)")?;
    let kinds: Vec<&str> = kinds
        .as_array()
        .context("kinds")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        kinds.contains(&"create") && kinds.contains(&"drained"),
        "{kinds:?}"
    );
    // The tenant page shows its right-sizing recommendation and the evidence.
    let sampled = b
        .wait(
            "the recommendation",
            "(document.querySelector('#recommendation [data-col=\"sampled\"]') || {}).textContent",
        )
        .await?;
    let rec = s.get("/v1/tenants/acme/recommendation").await?;
    let size =
        b.eval("document.querySelector('#recommendation [data-col=\"size\"]').textContent")?;
    let size = size.as_str().context("size")?;
    assert!(size.contains(" CPU / ") && size.ends_with(" MB"), "{size}");
    // The page was drawn a moment before the API was asked: when no job reported in between,
    // the two agree exactly.
    let sampled = sampled.as_str().context("sampled")?;
    if sampled.split(' ').next() == Some(rec["evidence"]["jobs_sampled"].to_string().as_str()) {
        let want = format!(
            "{} CPU / {} MB",
            rec["sandbox_size"]["cpus"].as_f64().context("cpus")?,
            rec["sandbox_size"]["memory_mb"]
        );
        assert_eq!(size, want);
    }
    b.wait(
        "acme's history",
        "S.tenants['acme'] && S.tenants['acme'].length >= 2",
    )
    .await?;
    b.wait(
        "the failed job among the failures",
        "document.querySelectorAll('#failures tr .s-failed').length > 0",
    )
    .await?;
    b.screenshot(&docs.join("dashboard-tenant.png"))?;
    assert_eq!(b.eval("window.__sameDocument")?, true);

    // A job's page, from its tenant's job list: its output shows while it runs (it waits for a
    // flag created only once the page shows its first line), then the rest and its end.
    // (The flag is written into the job's own working directory, all a confined job sees.)
    let job = enqueue(
        &s,
        "initech",
        "echo compiling; while [ ! -e go ]; do sleep 0.05; done; echo 'warning: x' >&2; echo done",
    )
    .await?;
    b.eval("location.hash = '#/tenant/initech'; true")?;
    let link = format!("tr[data-job=\"{job}\"] a[href=\"#/job/{job}\"]");
    b.wait(
        "the job's link in the tenant's job list",
        &format!("document.querySelector('{link}')"),
    )
    .await?;
    b.eval(&format!("document.querySelector('{link}').click(); true"))?;
    b.wait(
        "the job's first line, live",
        "(document.querySelector('#log') || {}).textContent === 'compiling\\n'",
    )
    .await?;
    assert_eq!(s.get(&format!("/v1/jobs/{job}")).await?["state"], "running");
    assert!(s.write_in_job_sandbox(&job, "go").await?);
    b.wait(
        "the rest of the output and the job's end",
        "document.querySelector('#log').textContent.includes('done\\n') && \
         (document.querySelector('#jobinfo .badge') || {}).textContent === 'succeeded'",
    )
    .await?;
    let log = b.eval("document.querySelector('#log').textContent")?;
    assert!(
        log.as_str()
            .is_some_and(|l| l.starts_with("compiling\n") && l.contains("warning: x\n")),
        "{log}"
    );
    b.screenshot(&docs.join("dashboard-job.png"))?;
    assert_eq!(b.eval("window.__sameDocument")?, true);
    Ok(())
}
