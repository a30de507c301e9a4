//! The way to etcd for tenants' requests: one channel balanced over the cluster's endpoints
//! that answer (plain TCP or OpenSSL, TCP_NODELAY, each endpoint health-checked by the
//! broker's own [`etcd_broker::etcd::Endpoints`]: a stopped or hung member is left out until
//! it answers again), and the one rule of forwarding: a request to etcd carries the caller's own credentials metadata and nothing of
//! the proxy's, so etcd's RBAC decides as if the client had called it directly.

use std::time::Duration;

use etcd_broker::etcd::{health_probe, Endpoints, HealthChecked};
use etcd_broker::tls::ClientTls;
use futures_util::TryFutureExt;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::transport::Endpoint;
use tonic::Request;
use url::Url;

use crate::balancer::RoundRobin;
use crate::caller::TOKEN_KEYS;
use crate::pb::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use crate::policy;

/// The metadata copied from a client's request to etcd's: its token, and `hasleader`, with
/// which clients ask etcd to refuse a watch while the cluster has no leader. Nothing else:
/// whatever else a client sends is not meant for etcd.
pub const FORWARDED_KEYS: [&str; 3] = [TOKEN_KEYS[0], TOKEN_KEYS[1], "hasleader"];

/// A gRPC channel to etcd, balanced over its endpoints ([`RoundRobin`]: no task between a
/// request and its endpoint's channel).
///
/// A newtype with an error type of its own: with the balancer's `BoxError` as error, the
/// generated clients' futures are not provably `Send` inside `#[async_trait]` methods (a
/// known limit of the compiler's reasoning about `Into<Box<dyn Error>>` across lifetimes).
#[derive(Clone)]
pub struct Channel(RoundRobin<tonic::transport::Channel>);

/// A request that did not reach etcd; tonic reads the cause (e.g. a refused connection,
/// UNAVAILABLE) from its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(#[source] tower::BoxError);

/// The balancer's answer, its error wrapped (no allocation beyond the balancer's own).
type ChannelFuture = futures_util::future::MapErr<
    <RoundRobin<tonic::transport::Channel> as tower::Service<http::Request<tonic::body::Body>>>::Future,
    fn(tower::BoxError) -> ChannelError,
>;

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = ChannelError;
    type Future = ChannelFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ChannelError>> {
        self.0.poll_ready(cx).map_err(ChannelError)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(request).map_err(ChannelError as fn(tower::BoxError) -> ChannelError)
    }
}

/// Why the channel could not be set up: what is wrong, never PEM text.
#[derive(Debug, thiserror::Error)]
#[error("etcd endpoints: {0}")]
pub struct BackendError(String);

/// etcd's services on one balanced channel; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    channel: Channel,
    endpoints: Endpoints,
}

impl Backend {
    /// A channel over `endpoints`, dialled lazily (a dead endpoint fails no start), each
    /// request sent to the next of the endpoints whose health check (or last request)
    /// answered; with none answering, to any (see [`etcd_broker::etcd::Endpoints`]). Starts one prober per endpoint: call it inside the
    /// tokio runtime.
    pub fn new(endpoints: &[Url], tls: &ClientTls) -> Result<Backend, BackendError> {
        let health = Endpoints::with_heartbeat(policy::HEARTBEAT);
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let channels = if endpoints.iter().all(|e| e.scheme() == "http") {
            lazy_channels(endpoints, tcp, &health)?
        } else {
            let ssl = etcd_broker::tls::connector(tls).map_err(|e| BackendError(e.to_string()))?;
            let https = hyper_openssl::client::legacy::HttpsConnector::with_connector(tcp, ssl)
                .map_err(|e| BackendError(format!("OpenSSL: {e}")))?;
            lazy_channels(endpoints, https, &health)?
        };
        let balancer = RoundRobin::new(channels).map_err(|e| BackendError(e.to_string()))?;
        Ok(Backend { channel: Channel(balancer), endpoints: health })
    }

    /// How many endpoints answer now (readiness: none, and nothing can be served).
    pub fn answering(&self) -> usize {
        self.endpoints.answering()
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(policy::MAX_RESPONSE_BYTES)
    }

    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(policy::MAX_RESPONSE_BYTES)
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone()).max_decoding_message_size(policy::MAX_RESPONSE_BYTES)
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone()).max_decoding_message_size(policy::MAX_RESPONSE_BYTES)
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(policy::MAX_RESPONSE_BYTES)
    }
}

/// One lazily connected channel per endpoint, each with the same connector, each probed
/// (etcd's gRPC health check) as one of `health`.
fn lazy_channels<C>(
    endpoints: &[Url],
    connector: C,
    health: &Endpoints,
) -> Result<Vec<HealthChecked<tonic::transport::Channel>>, BackendError>
where
    C: tower::Service<http::Uri> + Clone + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Future: Send,
    tower::BoxError: From<C::Error> + Send,
{
    endpoints
        .iter()
        .map(|url| {
            let endpoint = Endpoint::from_shared(url.as_str().trim_end_matches('/').to_owned())
                .map_err(|e| BackendError(format!("{url}: {e}")))?
                .connect_timeout(policy::CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(policy::KEEPALIVE_INTERVAL)
                .keep_alive_timeout(policy::KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .tcp_keepalive(Some(Duration::from_secs(30)));
            let channel = endpoint.connect_with_connector_lazy(connector.clone());
            let name = url.as_str().trim_end_matches('/').to_owned();
            Ok(health.add(name, channel.clone(), health_probe(channel)))
        })
        .collect()
}

/// A request to etcd with `message` and the caller's credentials from `metadata` (see
/// [`FORWARDED_KEYS`]).
pub fn forward<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    copy_credentials(metadata, request.metadata_mut());
    request
}

/// Copies [`FORWARDED_KEYS`] from a client's metadata into a request to etcd.
pub fn copy_credentials(from: &MetadataMap, to: &mut MetadataMap) {
    for key in FORWARDED_KEYS {
        for value in from.get_all(key) {
            to.append(key, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credentials_and_hasleader_are_forwarded() {
        let mut client = MetadataMap::new();
        client.insert("token", "t".parse().unwrap());
        client.insert("hasleader", "true".parse().unwrap());
        client.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let request = forward(&client, ());
        let sent = request.metadata();
        assert_eq!(sent.get("token").unwrap(), "t");
        assert_eq!(sent.get("hasleader").unwrap(), "true");
        assert!(sent.get("x-forwarded-for").is_none());
        assert_eq!(sent.len(), 2);
    }
}
