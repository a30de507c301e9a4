//! How ids map to etcd keys and etcd user/role names (documented in `docs/naming.md`).
//!
//! Deterministic, so an operator can find everything that belongs to an instance with
//! `etcd-broker-ops names`. Ids cannot contain '.' or '/', so the separators below are unambiguous.

use crate::osb::{BindingId, InstanceId};

/// Default prefix of tenant data.
pub const DEFAULT_DATA_PREFIX: &str = "/service_instances/";
/// Default prefix of the broker's own records.
pub const DEFAULT_STATE_PREFIX: &str = "/etcd-broker/";
/// Every broker-made user and role name starts with this.
pub const NAME_PREFIX: &str = "etcd-broker";

/// The key and name scheme for one broker deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    data_prefix: String,
    state_prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new(DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX)
    }
}

impl Names {
    /// Both prefixes must end with '/' and must not overlap (checked by the config).
    pub fn new(data_prefix: &str, state_prefix: &str) -> Self {
        Self { data_prefix: data_prefix.to_owned(), state_prefix: state_prefix.to_owned() }
    }

    /// The prefix of all tenant data (every instance's prefix starts with it).
    pub fn data_prefix(&self) -> &str {
        &self.data_prefix
    }

    /// Prefix of every instance record, walked by `reconcile`.
    pub fn instances_prefix(&self) -> String {
        format!("{}instances/", self.state_prefix)
    }

    /// The tenant's key prefix, with the trailing slash that keeps `abc` out of `abcd`.
    pub fn tenant_prefix(&self, instance: &InstanceId) -> String {
        format!("{}{}/", self.data_prefix, instance)
    }

    /// Where the instance record lives.
    pub fn instance_key(&self, instance: &InstanceId) -> String {
        format!("{}instances/{}", self.state_prefix, instance)
    }

    /// Prefix of all binding records of an instance.
    pub fn bindings_prefix(&self, instance: &InstanceId) -> String {
        format!("{}bindings/{}/", self.state_prefix, instance)
    }

    /// Where one binding record lives.
    pub fn binding_key(&self, instance: &InstanceId, binding: &BindingId) -> String {
        format!("{}{}", self.bindings_prefix(instance), binding)
    }

    /// The write fence of each cluster the broker writes to (`src/etcd/fence.rs`): every write
    /// that may be sent again compares its revision, moved when a member stops answering one.
    /// Under the state prefix, which only brokers and their tools write, on every cluster.
    pub fn write_fence(&self) -> String {
        format!("{}write-fence", self.state_prefix)
    }

    /// Prefix of every binding record (all instances), walked by `reseal`.
    pub fn all_bindings_prefix(&self) -> String {
        format!("{}bindings/", self.state_prefix)
    }

    /// Prefix of the per-plan instance index: one empty key per instance, so instances per
    /// plan can be counted without reading records.
    pub fn instance_index_prefix(&self, plan_id: &str) -> String {
        format!("{}index/instances/{plan_id}/", self.state_prefix)
    }

    /// Prefix of every plan's instance index (reconcile reads it whole).
    pub fn instance_index_root(&self) -> String {
        format!("{}index/instances/", self.state_prefix)
    }

    /// Prefix of every organization's instance index (reconcile reads it whole).
    pub fn organization_index_root(&self) -> String {
        format!("{}index/organizations/", self.state_prefix)
    }

    /// The instance's key in the per-plan index (ids as stored in records, already validated).
    pub fn instance_index_key(&self, plan_id: &str, instance: &str) -> String {
        format!("{}{instance}", self.instance_index_prefix(plan_id))
    }

    /// Prefix of the per-plan binding index.
    pub fn binding_index_prefix(&self, plan_id: &str) -> String {
        format!("{}index/bindings/{plan_id}/", self.state_prefix)
    }

    /// The binding's key in the per-plan index (ids as stored in records, already validated).
    pub fn binding_index_key(&self, plan_id: &str, instance: &str, binding: &str) -> String {
        format!("{}{instance}/{binding}", self.binding_index_prefix(plan_id))
    }

    /// Prefix of every plan's binding index: counts all binding records, also those of plans no
    /// longer in the catalog.
    pub fn all_bindings_index_prefix(&self) -> String {
        format!("{}index/bindings/", self.state_prefix)
    }

    /// Prefix of the index of sealed records: one empty key per binding record whose password
    /// is sealed, under the name of the key that sealed it, so a key's records are counted, and
    /// the key names in use found, without reading records.
    pub fn sealed_index_prefix(&self) -> String {
        format!("{}index/sealed/", self.state_prefix)
    }

    /// Prefix of the records one key seals (key names hold no '/').
    pub fn sealed_key_prefix(&self, key: &str) -> String {
        format!("{}{key}/", self.sealed_index_prefix())
    }

    /// A binding's key in the index of sealed records (ids as stored in records).
    pub fn sealed_index_key(&self, key: &str, instance: &str, binding: &str) -> String {
        format!("{}{instance}/{binding}", self.sealed_key_prefix(key))
    }

    /// Prefix of the index of bindings whose secrets live in a credential store (OpenBao KV):
    /// one empty key per such record, so that they are counted apart from records in clear.
    pub fn stored_index_prefix(&self) -> String {
        format!("{}index/credential-store/", self.state_prefix)
    }

    /// A binding's key in the index of records whose secrets live in a credential store.
    pub fn stored_index_key(&self, instance: &str, binding: &str) -> String {
        format!("{}{instance}/{binding}", self.stored_index_prefix())
    }

    /// Prefix of the index of expiring bindings: one empty key per binding whose user has not
    /// been revoked yet, under its expiry time, so the expiry leader reads only the bindings
    /// that are due, oldest first, without reading records.
    pub fn expiry_index_prefix(&self) -> String {
        format!("{}index/expiries/", self.state_prefix)
    }

    /// A binding's key in the index of expiring bindings: the expiry (seconds since the epoch,
    /// zero-padded so that key order is time order), then the ids as stored in records.
    pub fn expiry_index_key(&self, expires_at: u64, instance: &str, binding: &str) -> String {
        format!("{}{expires_at:020}/{instance}/{binding}", self.expiry_index_prefix())
    }

    /// What an expiry index key names: the expiry and the ids (`None` for a key of another
    /// shape).
    pub fn parse_expiry_index_key<'a>(&self, key: &'a str) -> Option<(u64, &'a str, &'a str)> {
        let rest = key.strip_prefix(&self.expiry_index_prefix())?;
        let mut parts = rest.splitn(3, '/');
        let (at, instance, binding) = (parts.next()?, parts.next()?, parts.next()?);
        Some((at.parse().ok()?, instance, binding))
    }

    /// The inventory leader's last counts (`broker/inventory.rs`): JSON, read by every broker
    /// for its gauges.
    pub fn inventory_key(&self) -> String {
        format!("{}inventory", self.state_prefix)
    }

    /// The key a background task's leader holds, attached to its lease.
    pub fn leader_key(&self, task: &str) -> String {
        format!("{}leaders/{task}", self.state_prefix)
    }

    /// Prefix of the per-organization instance index: one empty key per instance (created by
    /// this version or later), so an organization's instances are counted without reading
    /// records. The organization id is escaped ([`key_segment`]): it comes from the platform.
    pub fn organization_index_prefix(&self, organization: &str) -> String {
        format!("{}index/organizations/{}/", self.state_prefix, key_segment(organization))
    }

    /// The instance's key in the per-organization index.
    pub fn organization_index_key(&self, organization: &str, instance: &str) -> String {
        format!("{}{instance}", self.organization_index_prefix(organization))
    }

    /// The key every create counted against the plan's instance limit rewrites, in the same
    /// transaction that compares its revision (see `broker/limits.rs`).
    pub fn plan_limit_key(&self, plan_id: &str) -> String {
        format!("{}limits/plans/{plan_id}", self.state_prefix)
    }

    /// Likewise for an organization's instance limit.
    pub fn organization_limit_key(&self, organization: &str) -> String {
        format!("{}limits/organizations/{}", self.state_prefix, key_segment(organization))
    }

    /// Likewise for the limit of bindings of one instance; deleted with the instance record.
    pub fn instance_limit_key(&self, instance: &InstanceId) -> String {
        format!("{}limits/instances/{instance}", self.state_prefix)
    }

    /// Prefix of every instance's bind markers (reconcile walks it whole).
    pub fn bind_markers_root(&self) -> String {
        format!("{}binds-in-flight/", self.state_prefix)
    }

    /// Prefix of one instance's bind markers: deprovision reads it (one range, usually empty)
    /// instead of listing every etcd user and role.
    pub fn bind_markers_prefix(&self, instance: &InstanceId) -> String {
        format!("{}{}/", self.bind_markers_root(), instance)
    }

    /// The marker of a bind in flight: written with the bind's first record, deleted with the
    /// swap that makes it `ready` (or once its clean-up removed its user and role), so a user
    /// the bind made can be found from it after an unbind deleted the record.
    /// Ids as stored in records, already validated.
    pub fn bind_marker_key(&self, instance: &str, binding: &str) -> String {
        format!("{}{instance}/{binding}", self.bind_markers_root())
    }

    /// The ids a bind marker's key was made from (`None` for a key of another shape).
    pub fn parse_bind_marker_key(&self, key: &str) -> Option<(InstanceId, BindingId)> {
        let (instance, binding) = key.strip_prefix(&self.bind_markers_root())?.split_once('/')?;
        Some((InstanceId::parse(instance).ok()?, BindingId::parse(binding).ok()?))
    }

    /// Prefix of the queue of roles waiting to be deleted (see `broker/role_deletions.rs`).
    pub fn role_deletions_prefix(&self) -> String {
        format!("{}role-deletions/", self.state_prefix)
    }

    /// The queue entry of one role (role names hold no '/').
    pub fn role_deletion_key(&self, role: &str) -> String {
        format!("{}{role}", self.role_deletions_prefix())
    }

    /// The etcd user of a binding.
    pub fn user(&self, instance: &InstanceId, binding: &BindingId) -> String {
        format!("{NAME_PREFIX}.{instance}.{binding}")
    }

    /// The start of every user and role name of an instance's bindings. The final '.' keeps
    /// instance `abc` out of `abcd`'s names.
    pub fn instance_names_prefix(&self, instance: &InstanceId) -> String {
        format!("{NAME_PREFIX}.{instance}.")
    }

    /// The start of every user and role name the broker makes, of every instance.
    pub fn all_names_prefix(&self) -> String {
        format!("{NAME_PREFIX}.")
    }

    /// The ids a user or role name was made from, or `None` for a name the broker never makes
    /// (`reconcile` finds the binding record a name should have from it).
    pub fn parse_name(&self, name: &str) -> Option<(InstanceId, BindingId)> {
        let (instance, binding) = name.strip_prefix(&self.all_names_prefix())?.split_once('.')?;
        Some((InstanceId::parse(instance).ok()?, BindingId::parse(binding).ok()?))
    }

    /// The etcd role of a binding (same string as the user; roles and users are separate in etcd).
    pub fn role(&self, instance: &InstanceId, binding: &BindingId) -> String {
        self.user(instance, binding)
    }
}

/// `text` as one key segment: letters, digits, '.', '_' and '-' kept, every other byte as
/// `%XX`, so that no platform-given id can add a '/' (or an escape that collides).
fn key_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_prefixes_of_string_prefix_ids_do_not_nest() {
        let names = Names::default();
        let abc = names.tenant_prefix(&InstanceId::parse("abc").unwrap());
        let abcd = names.tenant_prefix(&InstanceId::parse("abcd").unwrap());
        assert_eq!(abc, "/service_instances/abc/");
        assert!(!abcd.starts_with(&abc));
    }

    #[test]
    fn organization_ids_are_one_escaped_segment() {
        let names = Names::new("/d/", "/s/");
        assert_eq!(names.organization_index_key("org-1", "i1"), "/s/index/organizations/org-1/i1");
        assert_eq!(names.organization_limit_key("a/b%2F"), "/s/limits/organizations/a%2Fb%252F");
        assert_ne!(names.organization_index_prefix("a/b"), names.organization_index_prefix("a%2Fb"));
    }

    #[test]
    fn names_are_deterministic() {
        let names = Names::new("/d/", "/s/");
        let i = InstanceId::parse("i1").unwrap();
        let b = BindingId::parse("b1").unwrap();
        assert_eq!(names.instance_key(&i), "/s/instances/i1");
        assert_eq!(names.binding_key(&i, &b), "/s/bindings/i1/b1");
        assert_eq!(names.user(&i, &b), "etcd-broker.i1.b1");
        assert_eq!(names.role(&i, &b), "etcd-broker.i1.b1");
        assert!(names.user(&i, &b).starts_with(&names.instance_names_prefix(&i)));
        let i10 = InstanceId::parse("i10").unwrap();
        assert!(!names.user(&i10, &b).starts_with(&names.instance_names_prefix(&i)));
        assert_eq!(names.role_deletion_key("etcd-broker.i1.b1"), "/s/role-deletions/etcd-broker.i1.b1");
        assert_eq!(names.bind_marker_key("i1", "b1"), "/s/binds-in-flight/i1/b1");
        assert!(names.bind_marker_key("i1", "b1").starts_with(&names.bind_markers_prefix(&i)));
        assert!(!names.bind_marker_key("i10", "b1").starts_with(&names.bind_markers_prefix(&i)));
        assert_eq!(names.parse_bind_marker_key("/s/binds-in-flight/i1/b1"), Some((i.clone(), b.clone())));
        assert_eq!(names.parse_bind_marker_key("/s/binds-in-flight/i1/b1/x"), None);
        assert!(!names.bind_markers_root().starts_with(&names.all_bindings_prefix()));
        assert_eq!(names.sealed_index_key("k1", "i1", "b1"), "/s/index/sealed/k1/i1/b1");
        assert!(names.binding_index_key("p", "i1", "b1").starts_with(&names.all_bindings_index_prefix()));
        assert_eq!(names.parse_name(&names.user(&i, &b)), Some((i.clone(), b.clone())));
        for never_made in
            ["etcd-broker.i1", "etcd-broker.i1.b1.x", "other.i1.b1", "etcd-broker..b1", "etcd-broker.i1./"]
        {
            assert_eq!(names.parse_name(never_made), None, "{never_made}");
        }
    }
}
