//! xtask's integration tests, one test binary (`cargo test -p xtask --test it`): the
//! developers' tools against a real local stack (etcd with auth, a broker).
//!
//! - `bench`: a short `xtask bench` run and its report
//! - `common`: what the tests read of processes in /proc
//! - `dev`: `xtask dev` and `dev --run`
//! - `soak`: a short `xtask soak` and its report

mod bench;
mod common;
mod dev;
mod soak;
