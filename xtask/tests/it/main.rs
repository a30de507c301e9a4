//! xtask's integration tests, one test binary (`cargo test -p xtask --test it`): the
//! developers' tools against a real local stack (etcd with auth, a broker).
//!
//! - `bench`: a short `xtask bench` run and its report
//! - `dev`: `xtask dev` and `dev --run`

mod bench;
mod dev;
