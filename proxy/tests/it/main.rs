//! The proxy's integration tests, one test binary (`cargo test -p etcd-broker-proxy --test
//! it`): real etcd (auth on, `ETCD_VERSION` 3.5 or 3.4), real `etcd-broker-proxy` processes on
//! free loopback ports, real clients; no fakes.
//!
//! - `common`: the harness: etcd with tenants, proxy processes, a raw gRPC client, etcdctl
//! - `broker`: a real broker process (this binary started again to serve it), its OSB client
//! - `encryption`: an encrypting plan's values, clear through the proxy, sealed in etcd
//! - `etcdctl`: unmodified etcdctl through the proxy with a tenant's credentials
//! - `firewall`: each attack of a tenant refused through the proxy and, in the same test,
//!   still working directly on etcd (why the proxy exists)
//! - `leases`: lease ownership across a restart and across two proxies
//! - `monitoring`: /metrics after etcdctl's calls (no secret in it), /ready while etcd is
//!   frozen, a frozen member of a 3-member cluster left out while etcdctl keeps working
//! - `revocation`: unbound and expired bindings' watches ended within a second through the
//!   proxy (a real broker unbinds), still open directly on etcd
//! - `tls`: TLS terminated by the proxy, TLS with a client certificate towards etcd
//! - `cli`: `--help`, bad flags, an etcd that is not there

mod broker;
mod cli;
mod common;
mod encryption;
mod etcdctl;
mod firewall;
mod leases;
mod monitoring;
mod revocation;
mod tls;
