//! The broker's integration tests, one test binary (`cargo test --test it`): real etcd (auth on,
//! `ETCD_VERSION` 3.5 or 3.4) and real `etcd-broker` processes on free loopback ports, no fakes.
//! One binary links the harness and the dependencies once, and all tests share one pool of
//! test threads instead of running file after file.
//!
//! - `common`: the harness: etcd, broker processes, an OSB client, metrics scraping
//! - `lifecycle`: provision, bind, use, unbind, deprovision; tenant isolation; role reaper pauses
//! - `bind_parameters`: read-only and sub-prefix bindings, their schema, what etcd refuses them
//! - `limits`: plan and organization limits with two brokers racing on one etcd
//! - `osb_protocol`: the status matrix (one table of requests and answers, bad input included),
//!   etcd down
//! - `chaos`: brokers killed with SIGKILL at random under OSB lifecycles; reconcile finds nothing
//! - `concurrency`: two brokers under racing clients; binds while etcd issues JWTs
//! - `disk_full`: etcd's NOSPACE alarm: clear 503s, `/ready` says why, recovery without a restart
//! - `failover`: dead and stopped endpoints and members (timing-based: etcd 3.5 only, test.sh)
//! - `observability`: metrics, promtool, a real Prometheus, health and readiness, JSON logs
//! - `prometheus_rules`: the alert rules under `promtool check` and `promtool test`
//! - `openbao`: a transit key of a real OpenBao seals binding passwords: rotation and reseal,
//!   OpenBao unavailable, the broker's token (AppRole, a token file renewed, one that expires);
//!   a plan's secrets in OpenBao KV (bind, GET, unbind, deprovision, OpenBao frozen, by reference)
//! - `templates`: per-plan credential templates: a shaped bind etcd takes, a failing one stops
//!   the start
//! - `sealing`: binding passwords sealed at rest, the start-up key check, damaged records
//! - `reconcile`: records against etcd, each inconsistency found and the safe ones repaired
//! - `rotation`: rotatable and expiring bindings; the expiry leader killed and replaced
//! - `reseal`: a key rotation with `etcd-broker-ops reseal`; its measurement (ignored)
//! - `store_batching`: the real store's coalesced reads and commits on a real etcd
//! - `store_retries`: the real store while auth keeps changing under it
//! - `bosh_properties`: `serve --bosh-properties`
//! - `tls`: TLS towards etcd and on the OSB listener
//! - `certificates`: certificate bindings on etcd with client-certificate auth
//! - `tidy`: the dependency rules of ARCHITECTURE.md, read from the source tree

mod bind_parameters;
mod bosh_properties;
mod certificates;
mod chaos;
mod common;
mod concurrency;
mod disk_full;
mod failover;
mod lifecycle;
mod limits;
mod observability;
mod openbao;
mod osb_protocol;
mod prometheus_rules;
mod reconcile;
mod reseal;
mod rotation;
mod sealing;
mod store_batching;
mod store_retries;
mod templates;
mod tidy;
mod tls;
