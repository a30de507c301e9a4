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
        // A client's broken stream ends the stream to etcd, which ends etcd's watches.
        let outbound =
            inbound.take_while(|r| std::future::ready(r.is_ok())).filter_map(|r| std::future::ready(r.ok()));
        let responses = self.0.backend.watch().watch(forward(&metadata, outbound)).await?.into_inner();
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
        Ok(Response::new(until_revoked(unsealed, registration)))
    }
}
