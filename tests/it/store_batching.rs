//! The real store against a real etcd: concurrent reads and commits that share one batched
//! request (src/etcd/batch.rs) get the answers they would get alone, including two commits
//! racing for the same key, and an etcd that refuses large transactions.

use std::sync::{Arc, Mutex};

use etcd_broker::etcd::{EtcdStore, Observer};
use etcd_broker::store::{Guard, Store, Write};
use local_etcd::{EtcdVersion, LocalEtcd, Options};

use crate::common::store_on;

const KEYS: usize = 12;
/// Two commits per key, both guarded by the key's absence: exactly one of them may win.
const COMMITS: usize = 2 * KEYS;

/// The batches the store reported: call kind and size.
type Batches = Arc<Mutex<Vec<(&'static str, usize)>>>;

async fn start(max_txn_ops: Option<u32>) -> (LocalEtcd, Arc<EtcdStore>, Batches) {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd =
        LocalEtcd::start(Options { version, max_txn_ops, ..Options::default() }).await.expect("etcd starts");
    let batches = Batches::default();
    let seen = batches.clone();
    let batch = Arc::new(move |call, size| seen.lock().unwrap().push((call, size)));
    let store = store_on(&etcd, Observer { batch, ..Observer::default() });
    (etcd, store, batches)
}

/// The largest batch reported for `call`.
fn largest(batches: &Batches, call: &str) -> usize {
    batches.lock().unwrap().iter().filter(|(c, _)| *c == call).map(|(_, size)| *size).max().unwrap_or(0)
}

fn key(i: usize) -> String {
    format!("/batching/{}", i % KEYS)
}

/// Runs the racing commits all at once on this (single-threaded) runtime, as an actix worker
/// would, checks every answer against what etcd holds afterwards, and returns the revisions
/// of the winning commits.
async fn race(store: &Arc<EtcdStore>) -> Vec<i64> {
    // One call first, so the connection is up and the racing commits queue together.
    assert_eq!(store.get("/batching/none").await.unwrap(), None);
    let commits = (0..COMMITS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let writes = [Write::Put(key(i), i.to_string().into_bytes())];
            (i, store.commit(&[Guard::Absent(key(i))], &writes).await.expect("commit answers"))
        })
    });
    let answers: Vec<_> =
        futures_util::future::join_all(commits).await.into_iter().map(|a| a.unwrap()).collect();
    let reads = (0..KEYS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.get(&key(i)).await.expect("get answers").expect("key was written") })
    });
    let stored: Vec<_> =
        futures_util::future::join_all(reads).await.into_iter().map(|r| r.unwrap()).collect();
    let mut revisions = Vec::new();
    for (k, value) in stored.iter().enumerate() {
        let contenders: Vec<_> = answers.iter().filter(|(i, _)| i % KEYS == k).collect();
        let winners: Vec<_> = contenders.iter().filter(|(_, revision)| revision.is_some()).collect();
        assert_eq!(winners.len(), 1, "key {k}: exactly one absent-guarded commit wins: {contenders:?}");
        let (winner, revision) = winners[0];
        assert_eq!(value.value, winner.to_string().into_bytes(), "key {k} holds the winner's value");
        assert_eq!(Some(value.mod_revision), *revision, "key {k}: the commit answered its write's revision");
        revisions.push(value.mod_revision);
    }
    revisions.sort_unstable();
    revisions.dedup();
    revisions
}

#[tokio::test]
async fn concurrent_commits_and_reads_share_requests_and_get_their_own_answers() {
    let (etcd, store, batches) = start(None).await;
    let revisions = race(&store).await;
    // Commits batched into one etcd transaction share its revision.
    assert!(revisions.len() < KEYS, "the {KEYS} winning commits were batched: revisions {revisions:?}");
    assert!(largest(&batches, "get") > 1 && largest(&batches, "txn") > 1, "batches: {batches:?}");
    etcd.stop().await;
}

#[tokio::test]
async fn an_etcd_that_refuses_large_transactions_gets_each_request_on_its_own() {
    let (etcd, store, batches) = start(Some(2)).await;
    let revisions = race(&store).await;
    assert!(
        largest(&batches, "get") > 2 && largest(&batches, "txn") > 2,
        "batches too large for etcd were formed: {batches:?}"
    );
    assert_eq!(revisions.len(), KEYS, "each winning commit was applied alone: revisions {revisions:?}");
    etcd.stop().await;
}

/// Sends the commits at once, in this order, and returns their answers.
async fn commit_together(store: &Arc<EtcdStore>, commits: Vec<(Vec<Guard>, Vec<Write>)>) -> Vec<Option<i64>> {
    let calls = commits.into_iter().map(|(guards, writes)| {
        let store = store.clone();
        tokio::spawn(async move { store.commit(&guards, &writes).await.expect("commit answers") })
    });
    futures_util::future::join_all(calls).await.into_iter().map(|a| a.unwrap()).collect()
}

#[tokio::test]
async fn a_commit_that_writes_what_another_compares_waits_for_the_next_batch() {
    let (etcd, store, batches) = start(None).await;
    let put = |k: &str| Write::Put(k.to_owned(), b"v".to_vec());
    let r = store.commit(&[], &[put("/batching/k"), put("/batching/shared")]).await.unwrap().unwrap();
    let k = |r| Guard::Revision("/batching/k".into(), r);
    let shared = |r| Guard::Revision("/batching/shared".into(), r);
    let answers = commit_together(
        &store,
        vec![
            (vec![], vec![put("/batching/first")]),
            // Deletes k, which the next commit compares: in one etcd Txn both compares would
            // see k at r and both would apply. Sent one after the other, the second fails.
            (vec![k(r)], vec![Write::Delete("/batching/k".into())]),
            (vec![k(r)], vec![put("/batching/after-k")]),
            // Only compare `shared`: they may share a batch, and both apply.
            (vec![shared(r)], vec![put("/batching/one")]),
            (vec![shared(r)], vec![put("/batching/two")]),
        ],
    )
    .await;
    assert!(answers[1].is_some(), "the delete applied: {answers:?}");
    assert_eq!(answers[2], None, "the commit comparing the deleted key failed: {answers:?}");
    assert_eq!(store.get("/batching/after-k").await.unwrap(), None);
    assert!(
        answers[3].is_some() && answers[3] == answers[4],
        "comparing one key, batched together: {answers:?}"
    );
    assert!(largest(&batches, "txn") > 1, "batches: {batches:?}");
    etcd.stop().await;
}

#[tokio::test]
async fn local_reads_of_several_keys_answer_each_in_order_in_one_request() {
    let (etcd, store, _) = start(None).await;
    let put = |k: &str, v: &str| Write::Put(k.to_owned(), v.as_bytes().to_vec());
    let written =
        store.commit(&[], &[put("/batching/a", "1"), put("/batching/c", "3")]).await.unwrap().unwrap();
    let keys = ["/batching/c", "/batching/b", "/batching/a"];
    let answers = store.get_local_all(&keys).await.unwrap();
    let values: Vec<_> =
        answers.iter().map(|a| a.as_ref().map(|v| (v.value.clone(), v.mod_revision))).collect();
    assert_eq!(values, [Some((b"3".to_vec(), written)), None, Some((b"1".to_vec(), written))]);
    // One key: a plain serializable Range, the same answer as get_local.
    assert_eq!(
        store.get_local_all(&["/batching/a"]).await.unwrap(),
        [store.get_local("/batching/a").await.unwrap()]
    );
    assert_eq!(store.get_local_all(&[]).await.unwrap(), []);
    etcd.stop().await;
}
