#!/usr/bin/env bash
# The large fault run of issue 7, on release binaries: 3 scheduler replicas on one Postgres and one
# Redis (started on spare loopback ports), 20,000 jobs across 100 tenants from 16 concurrent
# clients (every 10th through the apalis ingress queue), one replica killed with SIGKILL every 3 s
# (every other kill aims at the leader), Postgres restarted once mid-run; then the checks of
# loadtests/src/faults.rs. Extra arguments go to `shoal-loadtests faults` (--jobs, --tenants,
# --kill-every, --clients, --ingress-every, --max-sandboxes, --fly, --out FILE). With --fly the
# sandboxes run on the strict Fly emulator and the fleet is checked after the last job too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p shoal-scheduler --bin shoal -p shoal-agent --bin shoal-agent
cargo build --release -q -p shoal-loadtests --bin shoal-loadtests
exec target/release/shoal-loadtests faults "$@"
