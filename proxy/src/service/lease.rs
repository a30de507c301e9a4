//! The Lease service. etcd checks no permission on leases (any user may keep alive, inspect,
//! list or revoke any lease it can name), so the proxy does: a grant is recorded with its
//! owner ([`crate::leases`]) and every later use of the lease is the owner's only
//! ([`firewall::owns_lease`]); operators pass. The grant is forwarded first and recorded
//! after: a proxy that stops in between leaves a lease nobody may use, which expires on its
//! own, never a lease usable by somebody else.

use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{Proxy, Responses};
use crate::backend::forward;
use crate::caller::Caller;
use crate::firewall::{self, PREFIX};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::policy;
use crate::streams::{until_revoked, Kind};

#[tonic::async_trait]
impl Lease for Proxy {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let Some(owner) = caller.user().map(str::to_owned) else {
            return Err(firewall::unknown_identity("grant a lease"));
        };
        let (metadata, _, message) = request.into_parts();
        let granted = self.0.backend.lease().lease_grant(forward(&metadata, message)).await?;
        let id = granted.get_ref().id;
        if let Err(e) = self.0.owners.record(id, &owner).await {
            // Nobody could use the lease: give it back (as its grantee, with its token).
            let revoked =
                self.0.backend.lease().lease_revoke(forward(&metadata, LeaseRevokeRequest { id })).await;
            tracing::warn!(lease = %format!("{id:x}"), error = %e, revoked = revoked.is_ok(), "a granted lease could not be recorded");
            return Err(Status::unavailable(format!("{PREFIX}: the lease was not granted: {e}")));
        }
        Ok(granted)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        let id = message.id;
        firewall::owns_lease(&caller, id, &self.0.owners).await?;
        let revoked = self.0.backend.lease().lease_revoke(forward(&metadata, message)).await?;
        self.forget(id).await;
        Ok(revoked)
    }

    type LeaseKeepAliveStream = Responses<LeaseKeepAliveResponse>;

    /// Each keep-alive request is checked before it is forwarded; the first one of a lease
    /// the caller does not own ends the stream with PERMISSION_DENIED.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = self.caller(request.metadata())?;
        // Only a known user's stream can be ended on revocation; others own no lease anyway.
        let registration = caller.user().map(|user| self.0.streams.open(user, Kind::KeepAlive));
        let (metadata, _, inbound) = request.into_parts();
        let (refuse, mut refusal) = tokio::sync::oneshot::channel::<Status>();
        let checked = checked_keep_alives(inbound, caller, self.clone(), refuse);
        let responses = match self.0.backend.lease().lease_keep_alive(forward(&metadata, checked)).await {
            Ok(responses) => responses.into_inner(),
            Err(status) => return Err(refusal.try_recv().unwrap_or(status)),
        };
        let responses = with_refusal(responses, refusal);
        Ok(Response::new(match registration {
            Some(registration) => until_revoked(responses, registration),
            None => responses,
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        let id = message.id;
        firewall::owns_lease(&caller, id, &self.0.owners).await?;
        let answer = self.0.backend.lease().lease_time_to_live(forward(&metadata, message)).await?;
        if answer.get_ref().ttl == -1 {
            // etcd's answer for a lease that expired: its record has no use any more.
            self.forget(id).await;
        }
        Ok(answer)
    }

    /// Operators see every lease; a tenant only those it owns.
    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        let mut answer = self.0.backend.lease().lease_leases(forward(&metadata, message)).await?;
        match &caller {
            Caller::Admin(_) => {}
            Caller::Tenant(None) => answer.get_mut().leases.clear(),
            Caller::Tenant(Some(user)) => {
                let owned = self
                    .0
                    .owners
                    .owned_by(user)
                    .await
                    .map_err(|e| Status::unavailable(format!("{PREFIX}: {e}")))?;
                answer.get_mut().leases.retain(|lease| owned.contains(&lease.id));
            }
        }
        Ok(answer)
    }
}

impl Proxy {
    /// Deletes a lease's record once the lease is gone; a failure leaves a harmless record
    /// behind (see [`crate::leases`]).
    async fn forget(&self, id: i64) {
        if let Err(e) = self.0.owners.forget(id).await {
            tracing::warn!(lease = %format!("{id:x}"), error = %e, "the record of a revoked lease stays");
        }
    }
}

/// The client's keep-alive requests, each once the caller's ownership of its lease is
/// checked, read by a task of their own; the first refused ends them, its refusal sent to
/// `refuse`. (A task and a channel rather than stream combinators: the compiler cannot prove
/// those `Send` inside an `#[async_trait]` method.) The task ends with the client's stream or
/// with the stream to etcd.
fn checked_keep_alives(
    mut inbound: Streaming<LeaseKeepAliveRequest>,
    caller: Caller,
    proxy: Proxy,
    refuse: tokio::sync::oneshot::Sender<Status>,
) -> tokio_stream::wrappers::ReceiverStream<LeaseKeepAliveRequest> {
    let (checked, outbound) = tokio::sync::mpsc::channel(policy::KEEPALIVE_QUEUE);
    tokio::spawn(async move {
        loop {
            let keep_alive = tokio::select! {
                _ = checked.closed() => return,
                next = inbound.next() => match next {
                    Some(Ok(keep_alive)) => keep_alive,
                    // A request that does not decode: the stream ends with its status.
                    Some(Err(status)) => {
                        let _ = refuse.send(status);
                        return;
                    }
                    None => return,
                },
            };
            if let Err(status) = firewall::owns_lease(&caller, keep_alive.id, &proxy.0.owners).await {
                let _ = refuse.send(status);
                return;
            }
            if checked.send(keep_alive).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(outbound)
}

/// etcd's keep-alive responses, until the proxy refuses a request: then that refusal, and the
/// end of the stream.
fn with_refusal(
    responses: Streaming<LeaseKeepAliveResponse>,
    refusal: tokio::sync::oneshot::Receiver<Status>,
) -> Responses<LeaseKeepAliveResponse> {
    struct State {
        responses: Streaming<LeaseKeepAliveResponse>,
        refusal: Option<tokio::sync::oneshot::Receiver<Status>>,
        done: bool,
    }
    let state = State { responses, refusal: Some(refusal), done: false };
    Box::pin(futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let Some(refusal) = state.refusal.as_mut() else {
                let next = state.responses.next().await?;
                return Some((next, state));
            };
            tokio::select! {
                biased;
                refused = refusal => {
                    state.refusal = None;
                    if let Ok(status) = refused {
                        state.done = true;
                        return Some((Err(status), state));
                    }
                    // No refusal will come: the client's requests ended without one.
                }
                next = state.responses.next() => {
                    let next = next?;
                    return Some((next, state));
                }
            }
        }
    }))
}
