# The two commands of the README, and a few helpers. Every target installs what it needs.
.PHONY: run test tools build fmt clean-dev help release bosh_scp bench soak

help: ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: tools ## local etcd (auth on) + broker; BROKER_PORT=/ETCD_PORT= choose ports (0 = free)
	cargo run --locked -q -p xtask -- dev

test: ## the whole suite: fmt, clippy, tests on etcd 3.5, integration tests on etcd 3.4
	bash scripts/test.sh

tools: ## install protoc and etcd 3.5/3.4 into ./tools (idempotent)
	bash scripts/install-tools.sh

build: tools ## release binaries in target/release
	cargo build --locked --release --workspace

fmt: ## format the code
	cargo fmt --all

clean-dev: ## forget the local dev stack's files
	rm -rf .dev

release: ## stage the workspace + vendored crates for the BOSH package; with bosh: bosh create-release
	bash scripts/release.sh

bosh_scp: ## patch every broker VM of a deployment with a new binary (DRY_RUN=1, BOSH_DEPLOYMENT=...)
	bash scripts/bosh-scp.sh

soak: tools ## 30 minutes of lifecycle churn on two brokers, sampled for leaks; rewrites docs/reliability.md's soak table (SOAK_MINUTES=, SOAK_RATE=)
	cargo build --locked --release -q -p etcd-broker -p xtask
	target/release/xtask soak --out docs/reliability.md

bench: tools ## the standard benchmark scenario; rewrites docs/performance.md's tables (BENCH_PRELOAD=, BENCH_COUNT=, BENCH_ONLY=)
	cargo build --locked --release -q -p etcd-broker -p etcd-broker-ops -p etcd-broker-proxy -p xtask
	target/release/xtask bench-scenario
