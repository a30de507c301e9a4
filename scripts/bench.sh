#!/usr/bin/env bash
# `make bench`: the standard scenario, written to docs/performance.md.
#   - release build; a local etcd 3.5 (auth on) + broker started like `make run`;
#   - etcd-broker-ops bench (each phase in 4 rounds, broker and floor in turn) with 8 and 64 clients
#     at etcd's default bcrypt cost, 1 and 8 clients at
#     --bcrypt-cost 4, and 8 clients at cost 4 after preloading BENCH_PRELOAD instances with a
#     binding each (default 100000, about 5 minutes), compared with the empty cost-4 run;
#   - the catalog with wrk -t2 -c32 (Debian's wrk, unpacked into tools/ on first use);
#   - broker start-up time with the preloaded etcd;
#   - CPU per operation of the bench, the broker and etcd (all three on this machine).
# Figures depend on the machine: the file records it. Not a test; CI runs a smoke version only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh >/dev/null
cargo build --release --locked -q -p etcd-broker-ops -p etcd-broker
ops=target/release/etcd-broker-ops
count=${BENCH_COUNT:-1000}
preload=${BENCH_PRELOAD:-100000}
out=${BENCH_OUT:-docs/performance.md}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait; rm -rf "$work"' EXIT

# Debian's wrk and the LuaJIT it links, unpacked into tools/wrk (no root needed).
if [ ! -x tools/wrk/usr/bin/wrk ] || [ -z "$(find tools/wrk -name 'libluajit-5.1.so.2' -print -quit)" ]; then
  (cd "$work" && apt-get download wrk libluajit-5.1-2 >/dev/null 2>&1 &&
    for deb in ./*.deb; do dpkg -x "$deb" "$OLDPWD/tools/wrk"; done) ||
    echo "bench: could not install wrk; the catalog figure comes from etcd-broker-ops bench only" >&2
fi
wrk() { LD_LIBRARY_PATH="$PWD/tools/wrk/usr/lib/x86_64-linux-gnu" tools/wrk/usr/bin/wrk "$@"; }

# start_stack NAME [bcrypt-cost]: a local stack in $work/NAME; its env is loaded into the shell.
start_stack() {
  local dir="$work/$1"
  mkdir -p "$dir"
  "$ops" dev --dir "$dir" ${2:+--bcrypt-cost "$2"} > "$dir/dev.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$dir/env" ] && break; sleep 0.1; done
  [ -s "$dir/env" ] || { cat "$dir/dev.log" >&2; exit 1; }
  set -a; . "$dir/env"; set +a
}
stop_stack() { kill -INT "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

bench() { # NAME ARGS...
  local name=$1; shift
  echo "bench: $name" >&2
  "$ops" bench --count "$count" --json "$work/$name.json" --cpu-of "broker=$BROKER_PID" --cpu-of "etcd=$ETCD_PID" "$@" |
    tee "$work/$name.txt"
}

start_stack default
bench default-8 --clients 8
bench default-64 --clients 64 --ops provision,bind,get-binding,unbind,deprovision
catalog_wrk="(wrk not available)"
if [ -x tools/wrk/usr/bin/wrk ]; then
  auth=$(printf '%s:%s' "$BROKER_USERNAME" "$BROKER_PASSWORD" | base64 -w0)
  wrk -t2 -c32 -d10s -H "Authorization: Basic $auth" -H "X-Broker-API-Version: 2.17" \
    "$BROKER_URL/v2/catalog" > "$work/wrk.txt"
  catalog_wrk=$(grep -E "Requests/sec|Latency" "$work/wrk.txt" | tr -s ' ' | paste -sd ';' -)
fi
stop_stack

# The large deployment is built at --bcrypt-cost 4 (at etcd's default cost, 100,000 binds would
# take etcd close to two hours of bcrypt), so it is compared with an empty stack at cost 4.
start_stack cost4 4
bench cost4-1 --clients 1
bench cost4-8 --clients 8
bench preload-8 --clients 8 --preload "$preload" --keep-preload
# Start-up with the preloaded etcd: a second broker on the same config, timed until it answers.
config="$work/cost4/broker.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s%N)
ETCD_BROKER__LISTEN__PORT=$port ETCD_BROKER__METRICS__PORT=$mport target/release/etcd-broker serve --config "$config" \
  > "$work/startup.log" 2>&1 &
startup_pid=$!
until curl -s -o /dev/null -u "$BROKER_USERNAME:$BROKER_PASSWORD" -H "X-Broker-API-Version: 2.17" \
  "http://127.0.0.1:$port/v2/catalog"; do sleep 0.005; done
startup_ms=$(( ($(date +%s%N) - start) / 1000000 ))
kill "$startup_pid"; wait "$startup_pid" 2>/dev/null || true
stop_stack

# p50 with the preload against the empty stack, per operation.
scale_table=$(python3 - "$work/cost4-8.json" "$work/preload-8.json" <<'PY'
import json, sys
empty, large = (json.load(open(f)) for f in sys.argv[1:3])
p50 = lambda report: {o["operation"]: o["broker"]["p50_ms"] for o in report["operations"]}
floor = lambda report: {o["operation"]: (o.get("floor") or {}).get("p50_ms") for o in report["operations"]}
e, l, fe, fl = p50(empty), p50(large), floor(empty), floor(large)
print("| operation | p50 empty (ms) | p50 preloaded (ms) | preloaded / empty | floor: empty | preloaded | preloaded / empty |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for op in e:
    if op in l and e[op] > 0:
        floors = "| - | - | - |"
        if fe.get(op) and fl.get(op):
            floors = f"| {fe[op]:.2f} | {fl[op]:.2f} | {fl[op] / fe[op]:.2f} |"
        print(f"| {op} | {e[op]:.2f} | {l[op]:.2f} | {l[op] / e[op]:.2f} {floors}")
PY
)

wrk_rps=$( [ -s "$work/wrk.txt" ] && awk '/Requests\/sec/ {print $2}' "$work/wrk.txt" || true)
# A failure here must not throw away the run's reports: the document says so instead.
targets_table=$(python3 scripts/bench_targets.py "$work" "$wrk_rps" "$startup_ms") ||
  targets_table="(scripts/bench_targets.py failed on this run's reports; see make bench's output)"

etcd_version=$(tools/etcd-v3.5/bin/etcd --version | sed -n 1p)
{
  echo "# Performance"
  echo
  echo "Figures of \`make bench\` (scripts/bench.sh), \`etcd-broker-ops bench\` against a local etcd on loopback."
  echo "Latencies in ms; *floor* is the same etcd calls without the broker (see ops/src/bench/floor.rs);"
  echo "*ratio* is broker p50 / floor p50."
  echo
  echo "## Machine"
  echo
  echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; $etcd_version; measured $(date -u +%Y-%m-%d)"
  echo "- $count operations per phase; broker and etcd on the same machine as the load"
  for name in default-8 default-64 cost4-1 cost4-8 preload-8; do
    echo
    case $name in
      default-8) echo "## 8 clients, etcd's default bcrypt cost" ;;
      default-64) echo "## 64 clients, etcd's default bcrypt cost" ;;
      cost4-1) echo "## 1 client, --bcrypt-cost 4 (latency without queueing)" ;;
      cost4-8) echo "## 8 clients, --bcrypt-cost 4" ;;
      preload-8) echo "## 8 clients, --bcrypt-cost 4, after preloading $preload instances with a binding each" ;;
    esac
    echo
    echo '```'
    cat "$work/$name.txt"
    echo '```'
  done
  echo
  echo "## Catalog with wrk -t2 -c32 (basic auth)"
  echo
  echo "$catalog_wrk"
  echo
  echo "## Empty against preloaded ($preload instances), 8 clients, --bcrypt-cost 4"
  echo
  echo "$scale_table"
  echo
  echo "## Start-up"
  echo
  echo "A broker started against the preloaded etcd answered its first catalog request after ${startup_ms} ms."
  echo
  echo "## Targets"
  echo
  echo "The issue's targets against this run (scripts/bench_targets.py reads the reports above):"
  echo
  echo "$targets_table"
  echo
  cat <<'NOTES'
## What limits each figure

- **etcd round trips.** Every operation is a short sequence of etcd calls (the *etcd calls/op*
  column, read from the broker's own metrics): provision 1 txn; bind 2 gets, 2 txns, a role
  (RoleAdd + RoleGrantPermission) and a user (UserAdd + UserGrantRole); unbind a get, 2 txns,
  UserDelete (its role is queued, see below); deprovision a get, a list, 2 txns and a
  DeleteRange; GET binding 1 get.
  The broker runs them one after the other (each step must be durable before the next, for crash
  safety), so its latency is at least their sum: that sum is the floor.
- **The HTTP hop, and the CPU it costs.** The floor has no broker, so it also skips one
  loopback HTTP exchange and the broker's own work, on the same 2 cores as etcd and the load
  generator. The *CPU us/op* table under each run says where an operation's CPU goes: the
  bench itself (*client*: its HTTP client against the broker, its etcd client for the floor),
  the broker and etcd, with the floor's in the `f:` columns (read from /proc, `--cpu-of`).
  With one client, an HTTP exchange that touches nothing is the catalog's p50, 0.10 ms, and
  GET binding's floor is a single linearizable get of 0.24-0.30 ms: the hop alone makes that
  1.33-1.42x before the broker does any work (measured 0.38-0.45 ms, 1.52-1.69x over the last
  three runs). With 8 clients the cores are saturated and latency follows CPU: a GET binding
  costs 160-250 us of CPU through the broker against 100-175 us for the bare get. The
  broker's own share is 60-82 us, over half of it in the kernel's TCP paths (on loopback the
  sender also runs the receiver's side): it receives and answers the HTTP request and sends
  and receives the etcd request. The bench's HTTP client adds another 40-58 us. etcd no
  longer spends more on a get that comes through the broker (61-112 us against 57-108 us;
  before the batching below, 100-145 against 60-90). Both sides use the same etcd connection
  code (src/etcd.rs `connect`). Hence GET binding still misses its 1.5x target with 1 and 8 clients
  (1.5-1.8x); with 64, where batching helps most, it is at 1.00-1.12x. A leaner load generator
  does not change that: with the bench on one thread (a current-thread runtime) the bare get
  took 0.20 ms at one client instead of 0.29-0.34 ms and the broker's GET binding 0.39-0.56 ms,
  1.9-2.0x at 1 and 8 clients. The floor is then the etcd round trip itself, and a broker
  behind an HTTP hop cannot come within 1.5x of it on this machine. What the hop costs here is
  mostly the VM waking an idle CPU: with wrk on one connection, the catalog's p50 was
  0.09-0.10 ms as the scheduler placed wrk and the broker, and 0.022-0.029 ms with both pinned
  to one CPU (taskset). Pinning is no way out: with the bench and the broker on one CPU and etcd
  on the other, GET binding took 0.43 ms against a floor of 0.25 ms (1.73x), as the floor
  gains from it too. The broker's own time per GET binding, its request duration less its
  etcd call's (its metrics), is 0.03 ms, and that etcd call takes as long as a bare etcd-client
  loop on one thread (0.29-0.30 ms). A bare hyper connection per client instead of reqwest
  in the bench saved 16 us of its CPU per request at 8 clients, and no latency at 1. The
  operations with several
  etcd calls, a bcrypt or an fsync per step stay at 0.4-1.1x: the hop and the broker's CPU
  are a fixed cost of 0.1-0.5 ms, small against those but not against a single get.
- **Batching (group commit).** The gets and commits that arrive on a broker thread while one of
  the same kind is in flight to etcd go out together when it returns: gets as one read-only
  Txn of Ranges (one read-index round for all, as linearizable as a Range of their own, since
  a batch is only sent after each of its gets was asked for), commits as one Txn holding each
  commit as a nested Txn (one request, one raft entry). A commit that writes a key another
  one in the batch compares or writes waits for the next batch (etcd evaluates all nested
  compares before applying any); commits that only compare the same key, like concurrent
  binds of one instance, share one. Up to 16 gets or 8 commits per batch, and up to 4 batches
  in flight per kind once full ones wait; with one request at a time a batch holds one request
  and nothing waits. `etcd_broker_etcd_batch_size` shows the batches. Against the make bench
  before it: provision at 8 clients 1.48x -> 1.05-1.06x, at 64 1.54x -> 0.94x (10,100 instead
  of 6,700 provisions/s; etcd's CPU per provision 115 -> 55 us); unbind at 64 0.89x -> 0.41x,
  deprovision 1.06x -> 0.73x; GET binding at 64 1.49x -> 1.12x. The floor sends each call on
  its own, so the ratios below 1 are the broker's batching beating the naive calls. etcd
  refusing a batch as a whole (`--max-txn-ops` below 16, `--max-request-bytes` below 8
  records) costs a retry of each request on its own, never a failure; any other error of a
  batched commit is every commit's error, since etcd may have applied it
  (tests/it/store_batching.rs).
- **What the profiles found.** The broker dialled etcd on the thread that first needed it, the
  role reaper's at start, and tonic runs a channel's buffer and HTTP/2 connection as tasks of
  that thread: every request of the actix worker crossed to the other thread and back. Each
  calling thread now has its own connection (src/etcd.rs): at one client GET binding went from
  0.47 to 0.40 ms, provision from 0.61 to 0.50 ms. actix-web without its `unicode` feature
  matches routes with regex-lite's backtracking PikeVM; with it, regex's DFA: GET binding at 8
  connections went from 6,900 to 9,000 requests/s. The broker serves on one thread by default
  (`listen.workers`; with 2, GET binding at 8 clients measured 1.66-1.80x against 1.57-1.66x,
  its batches being split between two connections).
  tonic's HTTP/2 stack writes a request's HEADERS and DATA frames in two writes (h2 grants a
  new stream its send window only on the connection's next turn, and the body is written by
  another task), and answers the ping etcd sends after nearly every response (for its
  bandwidth estimate) before the waiting task runs: three writes and three wake-ups of etcd
  per call (strace). Tried and left out: holding each etcd connection's flush back for one
  turn of the runtime, so a request leaves in one write. It saved 10% of the client's CPU per
  get in a sequential loop (86-91 -> 77-84 us) but no measurable latency, and the floor would
  gain as much. A faster allocator (mimalloc) sped up the bench's
  clients as much as the broker: no ratio moved, so it was left out too.
- **fsync.** Every txn, user and role change is a raft write that etcd fsyncs before answering.
  Reads (GET binding) are cheaper.
- **bcrypt.** etcd hashes a new user's password with bcrypt at `--bcrypt-cost` (default 10, about
  60 ms of CPU per bind on this machine, so at most ~30 binds/s on 2 cores whatever the broker
  does; cost 4 about 1 ms). Operators choose: a lower cost makes binds (and every etcd login)
  much cheaper, at the price of weaker protection of the password hashes in etcd's data
  directory and backups. The broker's passwords are 160 random bits, so bcrypt adds little to
  them; users with human-chosen passwords in the same etcd would lose more. The broker itself
  never hashes.
- **Auth revision.** etcd refuses a request when a user or role change is applied between its
  arrival and its execution ("auth revision is old"); each bind and unbind makes such changes,
  so under concurrency this is routine. With etcd's simple tokens the broker just sends the
  request again. It used to log in again instead: a bcrypt check of the root password that
  etcd itself restarts whenever auth changed meanwhile, which took up to 10 s under load (bind
  was 5x and unbind 63x its floor). With `--auth-token jwt` tokens carry the revision, so the
  broker refreshes its token, once for all requests waiting on it. A request refused three times
  holds back this broker's own auth changes until it gets through: at 64 clients a few binds in
  100,000 used to starve.
- **etcd's role deletes scale with the number of users.** etcd's RoleDelete reads and rewrites
  every user while it holds etcd's write lock: ~0.6 s per role with 100,000 bindings, during
  which every write on the cluster waits. Unbind therefore deletes only the user (which ends the
  binding's access: the role was granted to that user alone) and queues the role in the same
  transaction that deletes the record; the broker's role reaper deletes queued roles in the
  background, keeping etcd busy at most `role_reaper.busy_share` (10 %) of the time. The
  floor of unbind is then its own calls (get, txns, UserDelete), and the role deletions show
  up as the *roles still queued* count below each table, not in unbind's latency. The cost is
  not gone, only paced: at 100,000 users the reaper deletes about 10 roles a minute, and each
  deletion still stalls writes for ~0.6 s. So each deletion also waits for a pause in the
  broker's OSB traffic (half a second without a request, at most `role_reaper.yield_seconds`,
  60 s): under the bench's constant load it deletes one role a minute, and the stalls fall
  between platform requests rather than inside them (before the wait and the per-thread
  connections, the preloaded run's unbind and GET binding p50 were 1.4x the empty run's). The
  roles queued by a run are deleted once
  the load stops (the *roles still queued* count below each table: ~40 roles/s on an empty etcd).
  The bench waits for that (`--settle`, at most 300 s) before its preload and its first phase,
  so one run's deletions do not stall the next run's measurements: in the previous make bench
  the preloaded run started with the empty run's 2,000 roles still queued, each now a 0.6 s
  stall, and its provision p50 came out 1.26x the empty run's (its catalog, which touches no
  etcd, 1.30x); with the wait every operation is within 0.89-1.11x of the empty run.
- **Memory and start-up.** The broker keeps no per-instance state (every request reads etcd), so
  its RSS does not grow with the deployment, and it starts without reading etcd at all (it
  connects on the first request). mimalloc was tried as the allocator: within the noise for
  throughput, and RSS 36 MB instead of 22 MB, so the system allocator stays.
- **Noise.** p50s of the same run repeated move by up to 20 % on this machine (the catalog,
  which touches no etcd, was 1.3x slower in the preloaded run than in the empty one). Each
  phase therefore runs in 4 rounds, broker and floor in turn, so a ratio compares the two
  under the same background; the empty/preloaded comparison cannot be interleaved that way.
  That is why its table also shows the floor's p50s: the bare etcd calls drift between the two
  runs about as much as the broker does, either way. Over three make bench runs GET binding's
  floor (one get) went from 0.71 to 0.50 ms, from 0.68 to 0.96 ms and from 0.84 to 0.63 ms
  between the empty and the preloaded run, and two of those runs missed the 1.2x target.
- **TCP_NODELAY.** etcd-client's OpenSSL transport leaves Nagle's algorithm on: each etcd call
  then waited ~40 ms for a delayed ACK (this bench found it: a single get took 44 ms). The broker
  dials every endpoint through its own connector (plain TCP, or OpenSSL over it) with
  TCP_NODELAY (src/etcd.rs `connect`): a provision against etcd with TLS and client
  certificates took 44 ms before, 0.76 ms after (tests/it/tls.rs, 50 in a row). Since the
  endpoints are health-checked (src/endpoint_health.rs), each etcd request also passes one more
  buffer task and arms a 2 s timer; quick runs of GET binding showed no change.
- **Catalog** is served from memory (one constant-time basic-auth comparison, a pre-built JSON
  body); it is bound by HTTP handling, with wrk on the same 2 cores.
NOTES
} > "$out"
echo "bench: wrote $out" >&2
