#!/usr/bin/env bash
# Measures a `semantic_diff` *job* on two ~10 MB documents, as it runs through `shoal serve` and
# `shoal-agent` (release builds, the embedded default): the agent process's peak resident memory
# (`VmHWM`) against the documents' size, and the job's run time (started_at to finished_at).
# The documents are the ones `cargo run --release -p shoal-semdiff --example measure` writes.
# SKIP_BUILD=1 uses the release binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p shoal-scheduler --bin shoal -p shoal-agent --bin shoal-agent
dir=${TMPDIR:-/tmp}/shoal-semdiff-measure
[ -f "$dir/baseline.json" ] || cargo run --release -q -p shoal-semdiff --example measure >/dev/null
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$dir" "$work/body.json" <<'PY'
import sys
d, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    f.write('{"tenant": "mem", "kind": "semantic_diff", "spec": {"baseline": ')
    f.write(open(f"{d}/baseline.json").read())
    f.write(', "candidate": ')
    f.write(open(f"{d}/candidate.json").read())
    f.write('}}')
PY
input=$(( $(stat -c %s "$dir/baseline.json") + $(stat -c %s "$dir/candidate.json") ))
SHOAL_ADMIN_TOKEN=measure SHOAL_AGENT_BIN="$bin/shoal-agent" \
  "$bin/shoal" serve --listen 127.0.0.1:0 --data-dir "$work" >"$work/serve.log" 2>&1 &
pid=$!
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's#^  API: *\(http://[^ ]*\)/v1 .*#\1#p' "$work/serve.log")
  [ -n "$url" ] && curl -sf "$url/readyz" >/dev/null && break
  sleep 0.1
done
h="Authorization: Bearer measure"
curl -sf -X PUT "$url/v1/tenants/mem" -H "$h" -d '{"plan": "enterprise"}' >/dev/null
job=$(curl -sf -X POST "$url/v1/jobs" -H "$h" --data-binary @"$work/body.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
state=""
for _ in $(seq 1 600); do
  curl -sf "$url/v1/jobs/$job" -H "$h" >"$work/job.json"
  state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$work/job.json")
  case $state in succeeded|failed|dead) break ;; esac
  sleep 0.1
done
if [ "$state" != succeeded ]; then
  echo "the job did not succeed (state: ${state:-none}); the scheduler's log:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
agent=$(pgrep -f "$bin/shoal-agent" | head -n 1)
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
python3 - "$work/job.json" "$input" "$hwm" <<'PY'
import json, sys
from datetime import datetime
job = json.load(open(sys.argv[1]))
size, hwm_kib = int(sys.argv[2]), int(sys.argv[3])
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
ran = (t(job["finished_at"]) - t(job["started_at"])).total_seconds()
print(f"state {job['state']}, equal {job['result']['equal']}, {len(job['result']['changes'])} changes")
print(f"documents {size / 1e6:.1f} MB; agent peak RSS {hwm_kib * 1024 / 1e6:.1f} MB = {hwm_kib * 1024 / size:.1f}x; job ran {ran:.2f} s")
PY
