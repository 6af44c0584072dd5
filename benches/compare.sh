#!/usr/bin/env bash
# Runs one fan-out load, in one go on this machine, against three servers and prints a table:
#   floor   a minimal tokio-tungstenite server sending one pre-built frame per subscriber
#           (cli/examples/raw_floor.rs)
#   python  the fastapi-websocket-pubsub 1.0.1 server (integration-tests/python/peer.py)
#   tidings tidings serve on the memory backbone
# The client is the same for all three: tidings bench fanout.
#
# Settings (environment): SUBSCRIBERS (default 1000), RATE publications/s (100),
# DURATION seconds (10), PAYLOAD bytes (64). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10}
PAYLOAD=${PAYLOAD:-64}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p tidings-cli --bin tidings --example raw_floor
BIN="$TARGET/release/tidings"
FLOOR="$TARGET/release/examples/raw_floor"

VENV="$TARGET/bench-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r integration-tests/python/requirements.txt
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "error: nothing listens on 127.0.0.1:$1" >&2
  exit 1
}

run_bench() {
  "$BIN" bench fanout "$1" --subscribers "$SUBSCRIBERS" --publishers 1 --rate "$RATE" \
    --duration "$DURATION" --payload "$PAYLOAD" --json 2>/dev/null
}

"$FLOOR" 127.0.0.1:18800 >/dev/null & pids+=($!)
wait_port 18800
floor=$(run_bench ws://127.0.0.1:18800/pubsub)
kill "${pids[-1]}"

# The Python peer runs until its stdin closes: feed it from a FIFO held open by this script.
fifo="$TARGET/python-server.stdin"
rm -f "$fifo" && mkfifo "$fifo"
"$VENV/bin/python" integration-tests/python/peer.py server <"$fifo" >"$TARGET/python-server.out" 2>/dev/null &
pids+=($!)
exec 6>"$fifo"
for _ in $(seq 1 100); do grep -q listening "$TARGET/python-server.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*"port": \([0-9]*\).*/\1/p' "$TARGET/python-server.out" | head -1)
python=$(run_bench "ws://127.0.0.1:$port/pubsub")
exec 6>&-
wait "${pids[-1]}" 2>/dev/null || true

"$BIN" serve --listen 127.0.0.1:18802 >/dev/null 2>&1 & pids+=($!)
wait_port 18802
tidings=$(run_bench ws://127.0.0.1:18802/pubsub)

python3 - "$floor" "$python" "$tidings" <<'PY'
import json, sys
names = ["floor", "python", "tidings"]
runs = {name: json.loads(text) for name, text in zip(names, sys.argv[1:])}
print(f"fan-out: {runs['floor']['subscribers']} subscribers, {runs['floor']['target_rate']} publications/s, "
      f"{runs['floor']['payload_bytes']} B payload, {runs['floor']['duration_s']:.0f} s")
print("| server | deliveries/s | lost | p50 ms | p99 ms | deliveries vs floor | deliveries vs python |")
print("|---|---|---|---|---|---|---|")
for name in names:
    run = runs[name]
    latency = run["latency_us"]
    print(f"| {name} | {run['deliveries_per_s']:.0f} | {run['lost']} | {latency['p50'] / 1000:.1f} | "
          f"{latency['p99'] / 1000:.1f} | {run['deliveries_per_s'] / max(runs['floor']['deliveries_per_s'], 1):.2f}x | "
          f"{run['deliveries_per_s'] / max(runs['python']['deliveries_per_s'], 1):.1f}x |")
PY
