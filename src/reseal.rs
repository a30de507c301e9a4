//! Wiring for `etcd-broker-ops reseal`: the config's state cluster as a [`Store`] and its
//! keychain, handed to the record walk of [`crate::broker::reseal`].
//!
//! The operators' crate may not build a store itself (ARCHITECTURE.md: it uses the broker's
//! library for config, names, sealing and etcd's client API only), so the store is made here,
//! the same way `server.rs` makes the broker's, and stays inside the library.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::broker::names::Names;
use crate::broker::reseal::Reseal;
pub use crate::broker::reseal::{Pace, Progress, Source, Stopped, Summary, DEFAULT_PARALLEL};
use crate::config::Config;
use crate::etcd::{EtcdStore, Observer};
use crate::sealing::Sealing;
use crate::store::Store;

/// Rewrites (`dry_run`: counts) every binding record in the config's state cluster that the
/// active key of its keychain does not seal, at `pace`; see [`crate::broker::reseal`].
/// `Err` when the config does not seal or has no state cluster, before anything is read.
pub async fn reseal(
    config: &Config,
    dry_run: bool,
    pace: Pace,
    stop: &AtomicBool,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Summary, String> {
    // With sealing off, brokers write records they rewrite in clear again: a reseal would be
    // undone bit by bit, so it needs the brokers' config to seal.
    let keychain = match &config.sealing {
        Sealing::On(keychain) => keychain,
        Sealing::Off { .. } => {
            return Err("sealing is off in the config: set [secrets] sealing = \"on\" (and restart the \
                        brokers with it) before resealing"
                .to_owned())
        }
    };
    let name = &config.state_cluster;
    let Some(cluster) = config.clusters.get(name) else {
        return Err(format!("state_cluster '{name}' is not configured"));
    };
    let names = Names::new(&config.prefixes.data, &config.prefixes.state);
    let state: Arc<dyn Store> = EtcdStore::new(cluster, &names.write_fence(), Observer::default())
        .map_err(|e| format!("etcd cluster '{name}': TLS: {e}"))?;
    let run = Reseal { state, names, keychain: keychain.clone(), dry_run, pace };
    Ok(run.run(stop, progress).await)
}
