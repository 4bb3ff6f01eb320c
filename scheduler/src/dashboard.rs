//! The operators' dashboard at `/`: one self-contained page (no CDN, no build step) that reads the
//! API with the session cookie and refreshes itself.

use crate::api::session_redirect;
use crate::auth::cookie_token;
use crate::state::App;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct PageQuery {
    token: Option<String>,
}

pub async fn page(
    State(_app): State<Arc<App>>,
    Query(q): Query<PageQuery>,
    parts: Parts,
) -> Response {
    if let Some(t) = q.token {
        return session_redirect(&t);
    }
    let signed_in = cookie_token(&parts).is_some();
    let mut html = PAGE.to_string();
    if !signed_in {
        html = html.replace("<!--signin-->", "<p class=warn>Open the link the scheduler printed at start (<code>/?token=…</code>) to sign in.</p>");
    }
    Html(html).into_response()
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shoal</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:2rem;color:#1b1f24;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 1rem} table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.4rem .6rem;border-bottom:1px solid #e5e7eb;text-align:left} th{background:#f3f4f6}
.warn{color:#b45309} .num{text-align:right;font-variant-numeric:tabular-nums} #err{color:#b91c1c}
</style></head><body>
<h1>Shoal: pools</h1>
<!--signin-->
<p id="err"></p>
<table><thead><tr><th>tenant</th><th>plan</th><th class=num>desired</th><th class=num>queued</th><th class=num>running</th>
<th class=num>booting</th><th class=num>ready</th><th class=num>busy</th><th class=num>suspended</th><th class=num>stopped</th><th>draining</th></tr></thead>
<tbody id="pools"></tbody></table>
<script>
async function refresh(){
  try{
    const r = await fetch('/v1/pools',{credentials:'same-origin'});
    if(!r.ok){document.getElementById('err').textContent='API answered '+r.status;return}
    const d = await r.json();
    const rows = d.pools.map(p=>`<tr><td>${p.tenant}</td><td>${p.plan}</td><td class=num>${p.desired}</td><td class=num>${p.queued}</td><td class=num>${p.running}</td>`+
      ['booting','ready','busy','suspended','stopped'].map(s=>`<td class=num>${p.sandboxes[s]}</td>`).join('')+`<td>${p.draining?'yes':''}</td></tr>`);
    document.getElementById('pools').innerHTML = rows.join('');
    document.getElementById('err').textContent='';
  }catch(e){document.getElementById('err').textContent=String(e)}
}
refresh(); setInterval(refresh, 2000);
</script></body></html>"#;
