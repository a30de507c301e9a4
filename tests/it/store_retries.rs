//! The real store against a real etcd whose auth keeps changing, as it does while a broker
//! binds and unbinds at full speed: every user or role change makes etcd refuse requests that
//! were in flight ("auth revision is old"), and the store must still get each request through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use etcd_broker::etcd::{EtcdStore, Observer};
use etcd_broker::store::{Guard, Permission, Store, Write};
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use tokio::task::JoinHandle;

use crate::common::store_on;

/// Tasks that add and delete users and roles in a loop, as binds and unbinds do.
const CHANGERS: usize = 48;
/// Tasks that commit meanwhile, and how many commits each.
const WRITERS: usize = 8;
const COMMITS: usize = 20;

/// A commit refused for a stale auth revision is sent again; one refused three times holds the
/// store's own auth changes back until it got through. Without that hold, some commits here
/// chase the changes until their retries run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_get_through_while_auth_keeps_changing() {
    let etcd = start_etcd().await;
    let store = store_on(&etcd, Observer::default());
    let stop = Arc::new(AtomicBool::new(false));
    let changers = churn_auth(&store, CHANGERS, Changes::WithSlow, &stop);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for c in 0..COMMITS {
                    let key = format!("/written/{w}/{c}");
                    let (guards, writes) = ([Guard::Absent(key.clone())], [Write::Put(key, b"v".to_vec())]);
                    if let Err(e) = store.commit(&guards, &writes).await {
                        failures.push(e.to_string());
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for writer in writers {
        failures.extend(writer.await.unwrap());
    }
    let changes = stop_churn(&stop, changers).await;
    assert!(changes >= 4 * CHANGERS, "auth kept changing during the commits ({changes} changes)");
    assert!(
        failures.is_empty(),
        "{} of {} commits failed: {:?}",
        failures.len(),
        WRITERS * COMMITS,
        &failures[..failures.len().min(3)]
    );
    let written = store.count("/written/").await.unwrap();
    assert_eq!(written, (WRITERS * COMMITS) as u64);
    etcd.stop().await;
}

/// The store's own quick user and role changes do not make etcd refuse its commits: commits and
/// those changes wait for each other (`sides.rs`). Without that, 94 to 101 of these 160
/// commits were refused (3.4 and 3.5), each sent again after a pause. A wait is bounded (50 ms),
/// so on a slow machine a commit may still go out beside a change and meet a refusal: a few are
/// allowed, not half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_own_auth_changes_do_not_refuse_its_commits() {
    let etcd = start_etcd().await;
    let refusals = Arc::new(AtomicUsize::new(0));
    let counted = refusals.clone();
    let observer = Observer {
        stale_auth: Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
        ..Observer::default()
    };
    let store = store_on(&etcd, observer);
    let stop = Arc::new(AtomicBool::new(false));
    // A certificate bind's changes and an unbind's: none of them slow (no bcrypt, no
    // RoleDelete), so each is kept apart from commits.
    let changers = churn_auth(&store, 16, Changes::QuickOnly, &stop);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for c in 0..COMMITS {
                    let key = format!("/written/{w}/{c}");
                    let (guards, writes) = ([Guard::Absent(key.clone())], [Write::Put(key, b"v".to_vec())]);
                    store.commit(&guards, &writes).await.expect("committed");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let changes = stop_churn(&stop, changers).await;
    assert!(changes >= 3 * 16, "auth kept changing during the commits ({changes} changes)");
    let refused = refusals.load(Ordering::SeqCst);
    assert!(
        refused <= WRITERS * COMMITS / 20,
        "{refused} of {} commits refused for a stale auth revision",
        WRITERS * COMMITS
    );
    etcd.stop().await;
}

async fn start_etcd() -> LocalEtcd {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() })
        .await
        .expect("etcd starts")
}

/// Which user and role changes [`churn_auth`] makes.
#[derive(Clone, Copy, PartialEq)]
enum Changes {
    /// A password bind's and a role reaper's too: a bcrypt'ed UserAdd, a RoleDelete.
    WithSlow,
    /// A certificate bind's and an unbind's only.
    QuickOnly,
}

/// `tasks` tasks that change users and roles in a loop until `stop`, as binds and unbinds do;
/// each answers how many changes it made.
fn churn_auth(
    store: &Arc<EtcdStore>,
    tasks: usize,
    changes: Changes,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<usize>> {
    (0..tasks)
        .map(|i| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let (user, role) = (format!("user-{i}"), format!("role-{i}"));
                let permission = Permission::read_write_prefix(&format!("/tenant-{i}/"));
                let mut made = 0;
                while !stop.load(Ordering::SeqCst) {
                    store.ensure_role(&role, &permission).await.expect("role added");
                    match changes {
                        Changes::WithSlow => store.ensure_user(&user, "password", &role).await,
                        Changes::QuickOnly => store.ensure_certificate_user(&user, "unused", &role).await,
                    }
                    .expect("user added");
                    store.delete_user(&user).await.expect("user deleted");
                    made += 3;
                    if changes == Changes::WithSlow {
                        store.delete_role(&role).await.expect("role deleted");
                        made += 1;
                    }
                }
                made
            })
        })
        .collect()
}

/// Stops the churn and answers how many changes it made in all.
async fn stop_churn(stop: &AtomicBool, changers: Vec<JoinHandle<usize>>) -> usize {
    stop.store(true, Ordering::SeqCst);
    let mut changes = 0;
    for changer in changers {
        changes += changer.await.unwrap();
    }
    changes
}
