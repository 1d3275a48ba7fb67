#!/usr/bin/env bash
# Runs every test of the workspace, starting the servers they need first (see services.sh)
# and stopping what it started at the end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=services.sh
source scripts/services.sh
trap stop_services EXIT
if ! start_services; then
  echo "[test] a server the tests need is missing (see above)" >&2
  exit 1
fi
cargo test --workspace "$@"
# cqrs-config without its backend features: a configuration naming a missing one is refused.
cargo test -p cqrs-config --no-default-features "$@"
# The optional OpenTelemetry export of cqrs-axum.
cargo test -p cqrs-axum --features otel --test otel "$@"
