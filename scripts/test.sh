#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run):
#   1. formatting and lints (rustfmt, clippy with warnings as errors);
#   2. every unit and integration test of the workspace against etcd 3.5;
#   3. the integration tests again against etcd 3.4.
# Each integration test starts its own etcd (auth enabled) on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests against etcd 3.5"
ETCD_VERSION=3.5 cargo test --workspace --locked

step "integration tests against etcd 3.4"
ETCD_VERSION=3.4 cargo test --locked -p etcd-broker --test '*'
ETCD_VERSION=3.4 cargo test --locked -p local-etcd
