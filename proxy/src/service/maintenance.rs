//! The Maintenance service: Status is etcd's for operators and the proxy's view
//! ([`crate::view::View::tenant_status`]) for tenants; every other call acts on, or reveals,
//! the whole cluster (alarms, defragmentation, hashes, snapshots of every tenant's data,
//! leadership, downgrades) and is refused to tenants.

use tonic::{Request, Response, Status};

use super::{not_served, Proxy, Responses};
use crate::backend::forward;
use crate::caller::Caller;
use crate::firewall;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::*;

#[tonic::async_trait]
impl Maintenance for Proxy {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let caller = self.0.tokens.caller(request.metadata()).unwrap_or(Caller::Tenant(None));
        let (metadata, _, message) = request.into_parts();
        let status = self.0.backend.maintenance().status(forward(&metadata, message)).await?;
        match caller {
            Caller::Admin(_) => Ok(status),
            Caller::Tenant(_) => Ok(Response::new(self.0.view.tenant_status(status.into_inner()))),
        }
    }

    type SnapshotStream = Responses<SnapshotResponse>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let caller = self.0.tokens.caller(request.metadata()).unwrap_or(Caller::Tenant(None));
        Err(firewall::not_served(&caller, "Snapshot", "copy every tenant's data"))
    }

    not_served! { "disarm or raise alarms that protect the whole cluster";
        alarm(AlarmRequest) -> AlarmResponse = "Alarm";
    }
    not_served! { "stall the shared cluster while it defragments";
        defragment(DefragmentRequest) -> DefragmentResponse = "Defragment";
    }
    not_served! { "read a digest of every tenant's data";
        hash(HashRequest) -> HashResponse = "Hash";
        hash_kv(HashKvRequest) -> HashKvResponse = "HashKV";
    }
    not_served! { "move the shared cluster's leadership";
        move_leader(MoveLeaderRequest) -> MoveLeaderResponse = "MoveLeader";
    }
    not_served! { "change the shared cluster's version";
        downgrade(DowngradeRequest) -> DowngradeResponse = "Downgrade";
    }
}
