//! The Cluster service: MemberList answers the proxy's advertised URLs ([`crate::view`]), so
//! clients keep talking to the proxy; member administration is refused.

use tonic::{Request, Response, Status};

use super::{not_served, Proxy};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::*;

const WHY: &str = "change the members of the shared cluster";

#[tonic::async_trait]
impl Cluster for Proxy {
    /// Answered by the proxy alone, to anybody (clients ask before they authenticate).
    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(self.0.view.member_list(0)))
    }

    not_served! { WHY;
        member_add(MemberAddRequest) -> MemberAddResponse = "MemberAdd";
        member_remove(MemberRemoveRequest) -> MemberRemoveResponse = "MemberRemove";
        member_update(MemberUpdateRequest) -> MemberUpdateResponse = "MemberUpdate";
        member_promote(MemberPromoteRequest) -> MemberPromoteResponse = "MemberPromote";
    }
}
