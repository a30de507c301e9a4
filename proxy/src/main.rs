//! `etcd-broker-proxy`: the binary (serving comes with the services).

fn main() {}
