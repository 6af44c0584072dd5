#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the in-process tests, the integration tests over real
# sockets on 127.0.0.1, the CLI end-to-end tests and the doc tests.
# Nothing needs to be installed first beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
