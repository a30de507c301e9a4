//! The Watch service: the client's stream of watch requests forwarded to etcd on a stream of
//! its own, with the caller's token, and etcd's responses back, both ways in step: a response
//! is read from etcd only when the client is ready for it (HTTP/2 flow control reaches etcd),
//! so a client that stops reading costs the proxy no memory. etcd checks each watched range
//! against the caller's role. The stream is registered under its user and ended when the user
//! is revoked ([`crate::streams`]), which is why only users the proxy knows may watch.

use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{Proxy, Responses};
use crate::backend::forward;
use crate::encryption;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse};
use crate::streams::{until_revoked, Kind};

#[tonic::async_trait]
impl Watch for Proxy {
    type WatchStream = Responses<WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (_, user) = self.known_caller(request.metadata())?;
        let registration = self.0.streams.open(&user, Kind::Watch);
        let (metadata, _, inbound) = request.into_parts();
        // A client's broken stream (e.g. a request that does not decode) ends the stream to
        // etcd, which ends etcd's watches, and ends the client's with its status: etcd keeps a
        // stream whose requests ended open, so the client would otherwise wait for nothing.
        let (broken, broken_status) = tokio::sync::oneshot::channel::<Status>();
        let outbound = inbound.scan(Some(broken), |broken, request| {
            std::future::ready(match request {
                Ok(request) => Some(request),
                Err(status) => {
                    if let Some(broken) = broken.take() {
                        let _ = broken.send(status);
                    }
                    None
                }
            })
        });
        // etcd answers a watch stream's headers with its first response only, so a stream
        // broken before any request reached etcd must not wait for them.
        let mut etcd = self.0.backend.watch();
        let call = etcd.watch(forward(&metadata, outbound));
        tokio::pin!(call);
        let mut broken_status = Some(broken_status);
        let responses = loop {
            tokio::select! {
                answer = &mut call => break answer?.into_inner(),
                status = async { broken_status.as_mut().unwrap().await }, if broken_status.is_some() => {
                    match status {
                        Ok(status) => return Err(status),
                        Err(_) => broken_status = None,
                    }
                }
            }
        };
        // Events' values unsealed one response at a time, in order.
        let data_keys = self.0.data_keys.clone();
        let unsealed = responses.then(move |answer| {
            let data_keys = data_keys.clone();
            async move {
                let mut answer = answer?;
                data_keys.unseal_kvs(encryption::watch_response_kvs(&mut answer)).await?;
                Ok(answer)
            }
        });
        // The status of a broken request stream, if it breaks; a stream that ends well adds nothing.
        let broken = futures_util::stream::iter(broken_status)
            .then(|status| status)
            .filter_map(|status| std::future::ready(status.ok().map(Err)));
        Ok(Response::new(until_revoked(futures_util::stream::select(unsealed, broken), registration)))
    }
}
