//! Watches under load through the proxy: a client that opens a watch and never reads it while
//! a writer produces far more events than the proxy may hold (its memory stays bounded: HTTP/2
//! flow control reaches etcd, and the events wait there, not in the proxy), and a thousand
//! concurrent watch streams that each receive the event.

use std::time::{Duration, Instant};

use etcd_broker_proxy::pb::etcdserverpb::PutRequest;
use etcd_client::{Client, ConnectOptions};

use crate::common::*;

/// Events the writer produces while the watcher does not read: 64 MiB of values.
const EVENTS: usize = 1024;
const VALUE_BYTES: usize = 64 * 1024;
/// How much the proxy's resident memory may grow meanwhile: a quarter of what was written;
/// what the proxy does hold is HTTP/2 windows and a message or two per direction.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

#[tokio::test]
async fn a_watcher_that_never_reads_costs_the_proxy_bounded_memory() {
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start(&etcd).await;
    let watcher = Conn::login(&proxy.url, "alice").await;
    let (_open, mut stalled) = watcher.watch_prefix(&prefix("alice")).await.unwrap();
    let before = proxy.rss_kib();

    // The writer writes to etcd directly, so that only the watch goes through the proxy.
    let options = ConnectOptions::new().with_user("alice", password("alice"));
    let writer = Client::connect([etcd.endpoint()], Some(options)).await.unwrap();
    let started = Instant::now();
    let mut writers = Vec::new();
    for worker in 0..16 {
        let mut writer = writer.clone();
        writers.push(tokio::spawn(async move {
            for n in (worker..EVENTS).step_by(16) {
                let value = vec![b'a' + (n % 26) as u8; VALUE_BYTES];
                writer.put(format!("{}load/{n:04}", prefix("alice")), value, None).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let written = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled_rss = proxy.rss_kib();
    let growth = stalled_rss.saturating_sub(before);
    eprintln!(
        "slow watcher: {EVENTS} events of {VALUE_BYTES} bytes written in {written:?}; proxy RSS {before} KiB \
         -> {stalled_rss} KiB while the watcher did not read"
    );
    assert!(
        growth < RSS_GROWTH_BOUND_KIB,
        "the proxy's memory grew by {growth} KiB for a watcher that does not read"
    );

    // Nothing was dropped: once read, every event arrives, in order.
    let (mut seen, mut last) = (0, 0);
    let read = async {
        while seen < EVENTS {
            let answer = stalled.message().await.unwrap().expect("the watch goes on");
            for event in answer.events {
                let revision = event.kv.unwrap().mod_revision;
                assert!(revision > last, "in order");
                (seen, last) = (seen + 1, revision);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the events arrive once read");
    eprintln!("slow watcher: all {seen} events read; proxy RSS after reading them {} KiB", proxy.rss_kib());
}

/// Watch streams opened at once, over this many connections to the proxy.
const WATCHES: usize = 1000;
const CONNECTIONS: usize = 4;

#[tokio::test]
async fn a_thousand_concurrent_watches_each_receive_the_event() {
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start(&etcd).await;
    let first = Conn::login(&proxy.url, "alice").await;
    let mut conns = vec![first.clone()];
    for _ in 1..CONNECTIONS {
        // Other connections, the same login (one token).
        conns.push(Conn::anonymous(&proxy.url).await.with_token_of(&first));
    }
    let before = proxy.rss_kib();
    let started = Instant::now();
    let watched = format!("{}many/", prefix("alice"));
    let opening = (0..WATCHES).map(|n| {
        let (conn, watched) = (conns[n % CONNECTIONS].clone(), watched.clone());
        tokio::spawn(async move { conn.watch_prefix(&watched).await.unwrap() })
    });
    let mut watches = Vec::new();
    for opened in opening.collect::<Vec<_>>() {
        watches.push(opened.await.unwrap());
    }
    let opened_in = started.elapsed();
    let open_rss = proxy.rss_kib();

    let key = format!("{watched}event");
    let put = PutRequest { key: key.clone().into_bytes(), value: b"to all".to_vec(), ..Default::default() };
    first.kv().put(first.req(put)).await.unwrap();
    let started = Instant::now();
    let receiving = watches.into_iter().map(|(open, mut responses)| {
        tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(10), responses.message()).await;
            let answer = answer.expect("the event within 10 s").unwrap().expect("the watch goes on");
            drop(open);
            answer.events.len() == 1 && answer.events[0].kv.as_ref().unwrap().value == b"to all"
        })
    });
    let mut received = 0;
    for watch in receiving.collect::<Vec<_>>() {
        received += usize::from(watch.await.unwrap());
    }
    eprintln!(
        "{WATCHES} watches over {CONNECTIONS} connections opened in {opened_in:?}, the event received by all in {:?}; \
         proxy RSS {before} KiB -> {open_rss} KiB with them open",
        started.elapsed()
    );
    assert_eq!(received, WATCHES, "every watch received the event");
}
