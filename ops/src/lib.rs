//! `etcd-broker-ops`: what operators run against a deployment, shipped in the BOSH package.
//! The binary (main.rs) is the CLI over these modules; the library exists so that the
//! integration tests drive a broker with the same OSB client the operators' tools use.
//!
//! - `osb`: the OSB client (what a platform sends): raw calls and the lifecycle operations.
//! - `blackbox` (blackbox/): the end-to-end suite against any deployment.
//! - `registration` (registration/): `register` / `deregister` in Cloud Foundry (CF v3 API).
//! - `check`: `check release`, the release tree's specs, packages and manifests.
//! - `render` (render/): a manifest + ops files + vars -> the job's properties.json and the
//!   broker's TOML, exactly as a BOSH deployment would get them.
//! - `names`: the keys, user and role an instance/binding id maps to.
//! - `private_file`: files holding secrets, readable by their owner only.
//! - `sealing`: `keys generate` / `keys list` / `seal` / `unseal` (secrets sealed at rest).
//! - `reseal`: binding records rewritten sealed by the active key (key rotation).
//! - `reconcile`: records compared with etcd's users, roles, grants and data; safe repairs.
//! - `data_keys`: `data-keys`, an encrypted instance's data keys added and retired, its values
//!   rewritten through the tenant proxy under the newest.
//! - `proxy_user`: `proxy-user`, the tenant proxy's own etcd user and role (not root).
//! - `usage`: one instance's keys and bytes against its plan's quotas.
//!
//! Developers' tools (the local stack, the bench) live in the `xtask` crate, never here: this
//! crate must not depend on local-etcd or the bench's crates (ARCHITECTURE.md).

pub mod blackbox;
pub mod check;
pub mod data_keys;
pub mod names;
pub mod osb;
pub mod private_file;
pub mod proxy_user;
pub mod reconcile;
pub mod registration;
pub mod render;
pub mod reseal;
pub mod sealing;
pub mod usage;
