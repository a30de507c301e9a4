//! local-etcd's integration tests, one test binary (`cargo test -p local-etcd --test it`):
//! real etcd servers of both supported versions.

mod start;
