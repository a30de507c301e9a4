#!/usr/bin/env bash
# Runs packages/etcd-broker/packaging the way a BOSH compilation VM does, without network: the
# workspace staged by scripts/release.sh in a compile folder, a stand-in rust-1-linux package
# whose compile.env puts this machine's toolchain on PATH, an empty CARGO_HOME (no registry
# cache), and, where `unshare` can, no network namespace at all. Then runs both binaries.
# Proves the release compiles offline from what `make release` stages. Takes a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/packages/rust-1-linux/bosh" "$work/compile" "$work/install"

bash scripts/release.sh --stage-only --stage-dir "$work/compile/etcd-broker-workspace"

cargo_bin=$(dirname "$(command -v cargo)")
cat > "$work/packages/rust-1-linux/bosh/compile.env" <<ENV
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
export CARGO_HOME=/nonexistent/rust-1-linux-cargo-home
export PATH=$cargo_bin:\$PATH
ENV

offline=()
if unshare -n true 2>/dev/null; then
  offline=(unshare -n)
else
  echo "check-packaging: unshare -n is not allowed here; relying on CARGO_NET_OFFLINE only" >&2
fi
echo "check-packaging: running packages/etcd-broker/packaging ${offline[*]:+(no network)}" >&2
(cd "$work/compile" && "${offline[@]}" env BOSH_PACKAGES_DIR="$work/packages" \
  BOSH_COMPILE_TARGET="$work/compile" BOSH_INSTALL_TARGET="$work/install" \
  bash "$root/packages/etcd-broker/packaging")

"$work/install/bin/etcd-broker" --version
"$work/install/bin/etcd-broker-ops" --version
echo "check-packaging: the package compiles offline and its binaries run" >&2
