//! The proxy's integration tests, one test binary (`cargo test -p etcd-broker-proxy --test
//! it`): real etcd (auth on, `ETCD_VERSION` 3.5 or 3.4), real `etcd-broker-proxy` processes on
//! free loopback ports, real clients; no fakes.
//!
//! - `common`: the harness: etcd with tenants, proxy processes, a raw gRPC client, etcdctl
//! - `bad_input`: malformed protobuf and gRPC frames, values around etcd's size limit
//! - `broker`: a real broker process (this binary started again to serve it), its OSB client
//! - `encryption`: an encrypting plan's values, clear through the proxy, sealed in etcd
//! - `data_keys`: `etcd-broker-ops data-keys`: versions added and retired, values rewritten
//! - `etcdctl`: unmodified etcdctl through the proxy with a tenant's credentials
//! - `firewall`: each attack of a tenant refused through the proxy and, in the same test,
//!   still working directly on etcd (why the proxy exists)
//! - `quotas`: a plan's key, byte and rate quotas refusing etcdctl through the proxy; direct
//!   writes counted; `etcd-broker-ops usage`'s figures; writers racing through two proxies
//!   held to the documented bound
//! - `leases`: lease ownership across a restart and across two proxies
//! - `monitoring`: /metrics after etcdctl's calls (no secret in it), /ready while etcd is
//!   frozen, a frozen member of a 3-member cluster left out while etcdctl keeps working
//! - `revocation`: unbound and expired bindings' watches ended within a second through the
//!   proxy (a real broker unbinds), still open directly on etcd
//! - `tls`: TLS terminated by the proxy, TLS with a client certificate towards etcd
//! - `cli`: `--help`, bad flags, an etcd that is not there
//! - `clients`: client libraries from the registries (Rust's etcd-client, Node's etcd3),
//!   unmodified, through an encrypting proxy
//! - `watch_load`: a watcher that never reads (the proxy's memory stays bounded), a thousand
//!   concurrent watches

mod bad_input;
mod broker;
mod cli;
mod clients;
mod common;
mod data_keys;
mod encryption;
mod etcdctl;
mod firewall;
mod leases;
mod monitoring;
mod quotas;
mod revocation;
mod tls;
mod watch_load;
