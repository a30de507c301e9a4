//! `xtask`: the developers' tools of etcd-broker. Never shipped: the BOSH package builds only
//! `etcd-broker` and `etcd-broker-ops`, and scripts/release.sh leaves this crate out of the
//! staged workspace. Here live the dependencies operators never need (local-etcd,
//! hdrhistogram, indicatif).
//!
//! - `dev`: the local stack (etcd with auth + the broker) and its `<dir>/env` file.
//! - `stack`: the one way to use that stack from outside: start it, wait, run, stop
//!   (`dev --run -- CMD`, the bench scenario, the tests).
//! - `bench` (bench/): latency and throughput per OSB operation against the etcd floor.
//! - `scenario` (scenario/): `bench-scenario`, the standard run of `make bench`, and the
//!   generated tables of docs/performance.md.
//! - `soak`: `make soak`, lifecycle churn against two brokers, sampled for leaks, written into
//!   docs/reliability.md.

pub mod bench;
pub mod dev;
pub mod scenario;
pub mod soak;
pub mod stack;
