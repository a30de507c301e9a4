//! The KV service: reads and writes forwarded (etcd's RBAC decides on keys); a Put or Txn that
//! attaches a key to a lease only when the caller owns the lease; Compact for operators only.
//! Values of encrypting instances are sealed on the way in and unsealed on the way out
//! ([`crate::encryption`]); tenants' requests and writes are held to their instance's quotas
//! ([`crate::quotas`]).

use tonic::{Request, Response, Status};

use super::{Proxy, Responses};
use crate::backend::forward;
use crate::encryption;
use crate::firewall;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use crate::quotas;

#[tonic::async_trait]
impl Kv for Proxy {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        self.0.quotas.request(&caller, vec![message.key.clone()]).await?;
        self.0.data_keys.check_range(&message).await?;
        let mut answer = self.0.backend.kv().range(forward(&metadata, message)).await?;
        self.0.data_keys.unseal_kvs(answer.get_mut().kvs.iter_mut().collect()).await?;
        Ok(answer)
    }

    type RangeStreamStream = Responses<RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        // Not in etcd 3.4 or 3.5, which the proxy fronts; clients fall back to Range.
        Err(firewall::unimplemented("RangeStream"))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, mut message) = request.into_parts();
        if message.lease != 0 {
            firewall::owns_lease(&caller, message.lease, &self.0.owners).await?;
        }
        self.0.quotas.request(&caller, vec![message.key.clone()]).await?;
        self.0.data_keys.seal_put(&mut message).await?;
        let admitted = self.0.quotas.admit_put(&caller, &message).await?;
        let mut answer = self.0.backend.kv().put(forward(&metadata, message)).await?;
        admitted.answered(answer.get_ref().header.as_ref().map_or(0, |h| h.revision));
        self.0.data_keys.unseal_kvs(answer.get_mut().prev_kv.iter_mut().collect()).await?;
        Ok(answer)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        self.0.quotas.request(&caller, vec![message.key.clone()]).await?;
        let mut answer = self.0.backend.kv().delete_range(forward(&metadata, message)).await?;
        self.0.data_keys.unseal_kvs(answer.get_mut().prev_kvs.iter_mut().collect()).await?;
        Ok(answer)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, mut message) = request.into_parts();
        for lease in firewall::leases_of_txn(&message) {
            firewall::owns_lease(&caller, lease, &self.0.owners).await?;
        }
        self.0.quotas.request(&caller, quotas::txn_keys(&message)).await?;
        self.0.data_keys.seal_txn(&mut message).await?;
        let admitted = self.0.quotas.admit_txn(&caller, &message).await?;
        let mut answer = self.0.backend.kv().txn(forward(&metadata, message)).await?;
        admitted.answered_txn(answer.get_ref());
        let mut kvs = Vec::new();
        encryption::txn_response_kvs(answer.get_mut(), &mut kvs);
        self.0.data_keys.unseal_kvs(kvs).await?;
        Ok(answer)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        firewall::cluster_wide(
            &caller,
            "Compact",
            "discard the history of every tenant of the cluster (their watches and reads at older \
             revisions would fail)",
        )?;
        let (metadata, _, message) = request.into_parts();
        self.0.backend.kv().compact(forward(&metadata, message)).await
    }
}
