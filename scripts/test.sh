#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process tests, integration tests over real sockets
# on 127.0.0.1 (against Redis and the real Python peers), CLI end-to-end tests and doc tests.
#
# Services: Redis on 127.0.0.1:6379 (started here when it is down; TIDINGS_TEST_REDIS_URL
# points the tests elsewhere). Restart tests also start private redis-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*"; }

ensure_redis() {
  if [[ -n "${TIDINGS_TEST_REDIS_URL:-}" ]]; then
    return
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    return
  fi
  log "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "error: Redis did not start on 127.0.0.1:6379; see /var/log/redis/ci.log" >&2
  exit 1
}

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 is missing; the interop tests need Python 3.11 with venv and pip" >&2
  exit 1
fi
ensure_redis

cargo test --workspace --locked "$@"
