#!/usr/bin/env bash
# `make bosh_scp`: patch a running deployment with a freshly built broker, without a new release.
# Builds a linux release binary, then for every instance of the broker's instance group (from
# `bosh instances --json`): copies the binary to the VM, stops the job, installs the binary over
# the package's, and starts the job again. Instances are patched one at a time.
#
# Usage: scripts/bosh-scp.sh [--dry-run] [-d DEPLOYMENT] [-g INSTANCE_GROUP] [-j JOB]
#   --dry-run, DRY_RUN=1       print the commands that change something, run none of them (the
#                              read-only `bosh instances` query still runs, to name the instances)
#   -d, BOSH_DEPLOYMENT        deployment (default etcd-broker)
#   -g, INSTANCE_GROUP         instance group running the job (default etcd-broker)
#   -j, JOB                    job (and monit process) to restart (default etcd-broker)
#   BINARY=path                copy this binary instead of building one (cargo build --release)
# Needs a logged-in bosh session (BOSH_ENVIRONMENT, BOSH_CLIENT, ...) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

deployment=${BOSH_DEPLOYMENT:-etcd-broker}
group=${INSTANCE_GROUP:-etcd-broker}
job=${JOB:-etcd-broker}
dry_run=${DRY_RUN:-}
[ "$dry_run" = 0 ] && dry_run=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    -d|--deployment) deployment=${2:?$1 needs a value}; shift ;;
    -g|--instance-group) group=${2:?$1 needs a value}; shift ;;
    -j|--job) job=${2:?$1 needs a value}; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bosh_scp: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'bosh_scp: %s\n' "$*" >&2; }
# Runs a command that changes something, or only prints it on a dry run.
run() {
  printf '+ %s\n' "$*"
  [ -n "$dry_run" ] || "$@"
}

bosh=${BOSH_CLI:-bosh}
jq=${JQ:-jq}
command -v "$bosh" >/dev/null || { say "'$bosh' not found: install the bosh CLI and log in (bosh log-in)"; exit 1; }
command -v "$jq" >/dev/null || { say "'$jq' not found: install jq (apt install jq / brew install jq)"; exit 1; }

if ! listing=$("$bosh" -d "$deployment" instances --json); then
  say "'bosh -d $deployment instances' failed: is there a bosh session (bosh log-in, BOSH_ENVIRONMENT)?"
  exit 1
fi
instances=$(printf '%s' "$listing" |
  "$jq" -r --arg group "$group" '.Tables[0].Rows[] | .instance | select(startswith($group + "/"))') || {
  say "cannot read 'bosh instances --json' output"
  exit 1
}
if [ -z "$instances" ]; then
  say "deployment '$deployment' has no instance of group '$group'"
  exit 1
fi

binary=${BINARY:-}
if [ -z "$binary" ]; then
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) target_args=(); binary=target/release/etcd-broker ;;
    *) target_args=(--target x86_64-unknown-linux-gnu)
       binary=target/x86_64-unknown-linux-gnu/release/etcd-broker ;;
  esac
  say "building the linux release binary"
  run cargo build --release --locked -p etcd-broker "${target_args[@]}"
fi
[ -n "$dry_run" ] || [ -f "$binary" ] || { say "no binary at $binary"; exit 1; }

remote_tmp=/tmp/etcd-broker.bosh_scp
package_bin=/var/vcap/packages/etcd-broker/bin/etcd-broker
monit=/var/vcap/bosh/bin/monit
# Waits (up to 60 s) until monit no longer runs the job, so the binary is not replaced under it.
wait_stopped="for i in \$(seq 60); do sudo $monit summary | grep -q \"'$job'.*not monitored\$\" && exit 0; sleep 1; done; echo '$job did not stop' >&2; exit 1"

# An array, not a `while read` loop: bosh ssh would swallow the rest of the list from stdin.
mapfile -t list <<< "$instances"
say "patching ${#list[@]} instance(s) of $deployment/$group with $binary"
for instance in "${list[@]}"; do
  say "$instance: copy, stop, install, start"
  run "$bosh" -d "$deployment" scp "$binary" "$instance:$remote_tmp"
  run "$bosh" -d "$deployment" ssh "$instance" -c "sudo $monit stop $job && $wait_stopped"
  run "$bosh" -d "$deployment" ssh "$instance" -c \
    "sudo install -m 0755 $remote_tmp $package_bin && rm -f $remote_tmp && sudo $monit start $job"
done
say "done${dry_run:+ (dry run: nothing was changed)}"
