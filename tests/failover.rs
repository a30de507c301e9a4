//! Acceptance: a cluster's endpoints fail over. With a dead endpoint listed first, the broker
//! still serves every request from the live one, from the very first request on.

mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped() {
    let etcd = start_etcd().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let broker = BrokerProcess::start_with_config(
        |port, metrics_port| {
            let live = format!("endpoints = [{:?}]", etcd.endpoint());
            let both = format!("endpoints = [{dead:?}, {:?}]", etcd.endpoint());
            let config = config_toml(port, metrics_port, &etcd, None);
            assert!(config.contains(&live));
            config.replace(&live, &both)
        },
        &[],
    )
    .await;
    let osb = Osb::new(&broker.url);
    for i in 0..5 {
        let reply = osb.provision(&format!("f{i}"), SHARED).await;
        assert_eq!(reply.status, StatusCode::CREATED, "request {i}: {:?}", reply.body);
    }
    let bound = osb.bind("f0", "b0").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    // Credentials list both endpoints, so clients can fail over too.
    assert_eq!(bound.body["credentials"]["endpoints"][0], dead);
    for i in 0..5 {
        assert_eq!(osb.deprovision(&format!("f{i}")).await.status, StatusCode::OK);
    }
    broker.stop().await;
}
