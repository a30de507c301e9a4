//! The cluster as clients see it through the proxy: its members are the proxy's advertised
//! URLs (clients that discover members, e.g. with auto-sync, keep talking to the proxy), and a
//! tenant's Status shows the proxy, not etcd's members, leader, raft indexes, database size or
//! alarms, which are the operators' business and say how busy the other tenants are.
//!
//! Ids are derived from the URLs (SHA-256), so that every proxy with the same advertised URLs
//! answers the same ids.

use url::Url;

use crate::pb::etcdserverpb::{Member, MemberListResponse, ResponseHeader, StatusResponse};

/// The proxy's own members and ids.
#[derive(Debug, Clone)]
pub struct View {
    cluster_id: u64,
    members: Vec<Member>,
}

/// The first 8 bytes of SHA-256 of `text`, never 0 (etcd's "no member").
fn id_of(text: &str) -> u64 {
    let digest = openssl::sha::sha256(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

impl View {
    /// One member per advertised URL.
    pub fn new(advertised: &[Url]) -> View {
        let urls: Vec<String> =
            advertised.iter().map(|u| u.as_str().trim_end_matches('/').to_owned()).collect();
        let members = urls
            .iter()
            .map(|url| Member {
                id: id_of(url),
                name: "etcd-broker-proxy".to_owned(),
                client_ur_ls: vec![url.clone()],
                ..Default::default()
            })
            .collect();
        View { cluster_id: id_of(&urls.join(",")), members }
    }

    /// The member answering: the first advertised one.
    fn member_id(&self) -> u64 {
        self.members.first().map_or(1, |m| m.id)
    }

    /// A response header naming the proxy, at etcd's `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id(), revision, raft_term: 0 }
    }

    /// MemberList's answer: the advertised URLs.
    pub fn member_list(&self, revision: i64) -> MemberListResponse {
        MemberListResponse { header: Some(self.header(revision)), members: self.members.clone() }
    }

    /// etcd's Status as a tenant sees it: etcd's version and current revision (which a client
    /// sees in every response anyway), the proxy as member and leader, nothing else.
    pub fn tenant_status(&self, etcd: StatusResponse) -> StatusResponse {
        let revision = etcd.header.as_ref().map_or(0, |h| h.revision);
        StatusResponse {
            header: Some(self.header(revision)),
            version: etcd.version,
            leader: self.member_id(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_advertised_urls_with_stable_ids() {
        let urls: Vec<Url> =
            ["http://10.0.0.1:2379", "https://proxy.example:2379"].map(|u| u.parse().unwrap()).into();
        let view = View::new(&urls);
        let list = view.member_list(42);
        assert_eq!(list.members.len(), 2);
        assert_eq!(list.members[1].client_ur_ls, ["https://proxy.example:2379"]);
        assert_eq!(list.header.as_ref().unwrap().revision, 42);
        assert_eq!(View::new(&urls).member_list(1).members[0].id, list.members[0].id);
        let status = view.tenant_status(StatusResponse {
            version: "3.5.1".into(),
            db_size: 1 << 30,
            leader: 99,
            errors: vec!["NOSPACE".into()],
            ..Default::default()
        });
        assert_eq!(status.version, "3.5.1");
        assert_eq!((status.db_size, status.errors.len()), (0, 0));
        assert_eq!(status.leader, list.members[0].id);
    }
}
