#!/usr/bin/env bash
# `make release`: prepares the BOSH package source and, when the bosh CLI is installed, creates the
# release. Steps:
#   1. stage the workspace (Cargo.toml, Cargo.lock, src/, ops/, local-etcd/, proxy/, templates/, docs/:
#      tracked and new files, not ignored ones) into src/etcd-broker-workspace/, the folder that
#      packages/etcd-broker/spec names (BOSH takes package files from the release's src/);
#      the developers' xtask crate stays out: it is dropped from the staged workspace's members
#      and Cargo.lock (local-etcd stays, the broker's tests use it);
#   2. `cargo vendor` every crate the workspace needs, plus a static protoc (crate
#      protoc-bin-vendored-linux-x86_64, see scripts/release/protoc/), into its vendor/, and write
#      the .cargo/config.toml that makes cargo use it, so the compilation VM builds offline;
#      crates that only platforms other than x86_64 Linux need are left as stubs;
#   3. with bosh on PATH ($BOSH_CLI overrides): vendor the Rust toolchain package rust-1-linux if
#      the release lacks it (from $RUST_RELEASE_DIR, else a clone of
#      cloudfoundry/bosh-package-rust-release, which needs git-lfs): `bosh vendor-package` writes
#      packages/rust-1-linux/spec.lock and .final_builds/packages/rust-1-linux/index.yml and
#      uploads the toolchain to the blobstore of config/final.yml (credentials in
#      config/private.yml); then `bosh create-release` with RELEASE_ARGS (default: --force
#      --tarball dist/etcd-broker-dev.tgz).
# What to commit (docs/bosh.md): after vendoring, spec.lock and .final_builds/packages/
# rust-1-linux/; after a final release, .final_builds/ and releases/. Steps 1-2 write only
# ignored files.
#
# Usage: scripts/release.sh [--stage-only] [--stage-dir DIR]
#   --stage-only    stop after step 2 (also the default when bosh is not installed)
#   --stage-dir D   stage into D instead of src/etcd-broker-workspace (tests use it)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

stage_dir=src/etcd-broker-workspace
stage_only=${STAGE_ONLY:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --stage-only) stage_only=1 ;;
    --stage-dir) stage_dir=${2:?--stage-dir needs a folder}; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "release: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'release: %s\n' "$*" >&2; }
command -v cargo >/dev/null || { say "cargo is not installed"; exit 1; }
command -v git >/dev/null || { say "git is not installed"; exit 1; }

# Every locked crate of every platform into cargo's cache, from the registry if missing: the
# staged workspace is resolved offline below, and a machine that only ever built for Linux has
# never downloaded the Windows-only ones (e.g. anstyle-wincon).
say "fetching the locked crates (cargo fetch)"
cargo fetch --locked --quiet --manifest-path "$root/Cargo.toml"

say "staging the workspace into $stage_dir"
rm -rf "$stage_dir"
mkdir -p "$stage_dir"
git ls-files -z --cached --others --exclude-standard -- \
    Cargo.toml Cargo.lock src ops local-etcd proxy templates docs \
  | while IFS= read -r -d '' file; do
      # Files deleted from the work tree but still in the index are skipped.
      [ -f "$file" ] && printf '%s\0' "$file"
    done \
  | tar --null -T - -cf - | tar -xf - -C "$stage_dir"

# The one members line of Cargo.toml, without xtask; a changed layout fails here, not later.
sed -i 's/^members = \[\(.*\), "xtask"\]$/members = [\1]/' "$stage_dir/Cargo.toml"
if grep -q '"xtask"' "$stage_dir/Cargo.toml"; then
  say "cannot drop xtask from the staged Cargo.toml's members"; exit 1
fi
# Forget xtask's own dependencies in the staged lock file; every other version stays as locked.
cargo metadata --quiet --offline --format-version 1 --manifest-path "$stage_dir/Cargo.toml" >/dev/null

say "vendoring crates (cargo vendor)"
mkdir -p "$stage_dir/.cargo"
cargo vendor --locked --quiet --versioned-dirs --manifest-path "$stage_dir/Cargo.toml" \
  --sync "$root/scripts/release/protoc/Cargo.toml" "$stage_dir/vendor" >/dev/null
cat > "$stage_dir/.cargo/config.toml" <<'EOF'
# Written by scripts/release.sh: build from the vendored crates only (the BOSH compilation VM
# has no network).
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor"
EOF

# Linux only: cargo vendors the crates of every platform (windows-sys, wasm-bindgen, ...), which
# the compilation VM (x86_64 Linux, the one protoc we vendor) never builds. Each crate that no
# x86_64-unknown-linux-gnu build of the workspace or of the protoc manifest needs becomes a
# stub: its Cargo.toml (cargo still resolves all of Cargo.lock, every platform's part), an empty
# lib.rs, and a .cargo-checksum.json that lists no files but keeps the crate's checksum, which
# cargo compares with Cargo.lock's.
before=$(du -sk "$stage_dir/vendor" | cut -f1)
needed=$(
  cd "$stage_dir"
  for manifest in Cargo.toml "$root/scripts/release/protoc/Cargo.toml"; do
    cargo tree --offline --locked --quiet --manifest-path "$manifest" --workspace \
      --target x86_64-unknown-linux-gnu -e normal,build,dev --prefix none --format '{p}'
  done | awk '$3 !~ /^[(]\// { sub(/^v/, "", $2); print $1 "-" $2 }' | sort -u
)
stubs=0
for crate in "$stage_dir"/vendor/*/; do
  crate=${crate%/}
  if grep -qxF "$(basename "$crate")" <<<"$needed"; then
    continue
  fi
  checksum=$(grep -o '"package":"[0-9a-f]*"' "$crate/.cargo-checksum.json" || true)
  [ -n "$checksum" ] || { say "$crate: no package checksum to keep"; exit 1; }
  find "$crate" -mindepth 1 -maxdepth 1 ! -name Cargo.toml -exec rm -rf {} +
  mkdir "$crate/src"
  : > "$crate/src/lib.rs"
  printf '{"files":{},%s}\n' "$checksum" > "$crate/.cargo-checksum.json"
  stubs=$((stubs + 1))
done
after=$(du -sk "$stage_dir/vendor" | cut -f1)
say "vendor/: $stubs crates only other platforms need left as stubs, $((before / 1024)) MB -> $((after / 1024)) MB"

protoc=$(find "$stage_dir/vendor" -path '*/protoc-bin-vendored-linux-x86_64*/bin/protoc' -print -quit)
[ -n "$protoc" ] || { say "the vendored protoc is missing from $stage_dir/vendor"; exit 1; }
chmod +x "$protoc"
crates=$(find "$stage_dir/vendor" -mindepth 1 -maxdepth 1 -type d | wc -l)
say "staged $(du -sh "$stage_dir" | cut -f1) with $crates vendored crates"

if [ -n "$stage_only" ]; then
  exit 0
fi
bosh=${BOSH_CLI:-bosh}
if ! command -v "$bosh" >/dev/null; then
  say "the bosh CLI is not installed: staged only. Install it, then run 'make release' again"
  say "(or 'bosh create-release' yourself once packages/rust-1-linux is vendored; docs/bosh.md)"
  exit 0
fi

if [ ! -e packages/rust-1-linux/spec.lock ]; then
  rust_release=${RUST_RELEASE_DIR:-$root/tools/bosh-package-rust-release}
  if [ ! -d "$rust_release" ]; then
    # The toolchain's blobs in that repository are git-lfs files: without git-lfs a clone holds
    # only pointers to them, and vendor-package fails on their digests.
    if ! git lfs version >/dev/null 2>&1; then
      say "git-lfs is not installed: cloudfoundry/bosh-package-rust-release keeps the toolchain in"
      say "git-lfs files. Install git-lfs and run 'git lfs install' (docs/bosh.md), then again"
      exit 1
    fi
    say "cloning cloudfoundry/bosh-package-rust-release into $rust_release"
    git clone --quiet --depth 1 https://github.com/cloudfoundry/bosh-package-rust-release "$rust_release"
  fi
  for blob in "$rust_release"/final_blobs/*; do
    if [ -f "$blob" ] && head -c 200 "$blob" | grep -q '^version https://git-lfs.github.com/spec/'; then
      say "$blob is a git-lfs pointer, not the toolchain: install git-lfs, then run"
      say "'git lfs install && git lfs pull' in $rust_release (docs/bosh.md)"
      exit 1
    fi
  done
  if [ ! -e config/private.yml ]; then
    say "note: vendor-package uploads the toolchain to the blobstore of config/final.yml; its"
    say "credentials belong in config/private.yml, which is missing (docs/bosh.md)"
  fi
  say "bosh vendor-package rust-1-linux $rust_release"
  "$bosh" vendor-package rust-1-linux "$rust_release"
  say "commit packages/rust-1-linux/spec.lock and .final_builds/packages/rust-1-linux/index.yml:"
  say "they pin the toolchain, whose blob is now in the blobstore, for every clone"
fi

mkdir -p dist
# shellcheck disable=SC2086 # RELEASE_ARGS is a list of words on purpose
set -- ${RELEASE_ARGS:---force --tarball dist/etcd-broker-dev.tgz}
say "bosh create-release $*"
"$bosh" create-release "$@"
for arg in "$@"; do
  if [ "$arg" = --final ]; then
    say "commit .final_builds/ and releases/ (what the final release uploaded and its manifest),"
    say "then tag the commit"
  fi
done
