//! The real store against a real etcd whose auth keeps changing, as it does while a broker
//! binds and unbinds at full speed: every user or role change makes etcd refuse requests that
//! were in flight ("auth revision is old"), and the store must still get each request through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_broker::etcd::Observer;
use etcd_broker::store::{Guard, Permission, Store, Write};
use local_etcd::{EtcdVersion, LocalEtcd, Options};

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
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd = LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() })
        .await
        .expect("etcd starts");
    let store = store_on(&etcd, Observer::default());
    let stop = Arc::new(AtomicBool::new(false));
    let changers: Vec<_> = (0..CHANGERS)
        .map(|i| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let (user, role) = (format!("user-{i}"), format!("role-{i}"));
                let mut changes = 0;
                while !stop.load(Ordering::SeqCst) {
                    store
                        .ensure_role(&role, &Permission::read_write_prefix(&format!("/tenant-{i}/")))
                        .await
                        .expect("role added");
                    store.ensure_user(&user, "password", &role).await.expect("user added");
                    store.delete_user(&user).await.expect("user deleted");
                    store.delete_role(&role).await.expect("role deleted");
                    changes += 4;
                }
                changes
            })
        })
        .collect();
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
    stop.store(true, Ordering::SeqCst);
    let mut changes = 0;
    for changer in changers {
        changes += changer.await.unwrap();
    }
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
