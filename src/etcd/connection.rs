//! Dialling etcd and logging in: one balanced channel per connection over the endpoints that
//! answer ([`super::health`]), plain TCP or OpenSSL with TCP_NODELAY, and the logged-in client
//! with its token handling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use etcd_client::{Client, ConnectOptions};

use super::batch::{PendingCommit, Queue};
use super::call::bounded;
use super::health::{Endpoints, Probe};
use super::EtcdStore;
use crate::store::Versioned;
use crate::tls::ClientTls;

/// A logged-in client, and what its tokens are like.
pub(super) struct Connection {
    pub(super) client: Client,
    /// etcd issues JWTs (`--auth-token jwt`): they carry the auth revision they were issued at,
    /// so every user or role change makes them stale and they must be refreshed. etcd's default
    /// simple tokens are checked against the revision current when a request arrives, and a
    /// refresh (a bcrypt check of the password in etcd, which etcd repeats for as long as auth
    /// keeps changing during it) would only slow things down.
    pub(super) signed_tokens: bool,
    /// How many times this client's token has been refreshed: requests that all saw the same
    /// stale token log in once between them, not once each.
    pub(super) token_generation: AtomicU64,
    /// Held while refreshing, so a refresh is single-flight.
    refreshing: tokio::sync::Mutex<()>,
    /// Key reads waiting for this connection's next batched read: the gets that arrive while
    /// one is in flight go out together as one read-only Txn, so etcd does one read-index
    /// round and one gRPC exchange for all of them (linearizable like a Range of their own:
    /// a batch is only sent after each of its reads was asked for).
    pub(super) reads: Queue<String, Option<Versioned>>,
    /// Commits waiting for this connection's next batched write: those that arrive while one
    /// is in flight go out as one Txn with each commit a nested Txn of its own, so etcd
    /// checks and applies them in one request and one raft entry.
    pub(super) commits: Queue<PendingCommit, Option<i64>>,
}

/// Whether `token` is a JWT (three dot-separated parts) rather than a simple token
/// (random letters, a dot, a counter).
fn is_signed_token(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Connection {
    /// Refreshes the token unless another request already did since `seen`; returns the
    /// generation of the token now in use.
    pub(super) async fn refresh_token_once(&self, seen: u64) -> Result<u64, etcd_client::Error> {
        let _refreshing = self.refreshing.lock().await;
        if self.token_generation.load(Ordering::Acquire) == seen {
            bounded(self.client.refresh_token()).await?;
            self.token_generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(self.token_generation.load(Ordering::Acquire))
    }
}

impl EtcdStore {
    /// This thread's connection, dialled and logged in on first use.
    pub(super) async fn connection(&self) -> Result<Arc<Connection>, etcd_client::Error> {
        let cell = {
            let mut connections = super::unpoisoned::lock(&self.connections);
            connections.entry(std::thread::current().id()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            // Connecting dials nothing yet; the logins are the first requests, retried on the
            // same balancer while it learns which endpoints are dead. The client logs in for
            // itself; the second login only shows which kind of token this etcd issues.
            let client = connect(&self.endpoints, self.options.clone(), &self.tls).await?;
            let credentials = (self.username.clone(), self.password.expose().to_owned());
            self.until_reached(|| {
                // Clones share the token and credentials: this logs `client` in.
                let (mut client, credentials) = (client.clone(), credentials.clone());
                async move { bounded(client.update_user(Some(credentials))).await }
            })
            .await?;
            let token = self
                .until_reached(|| {
                    let (mut auth, (user, password)) = (client.auth_client(), credentials.clone());
                    async move { bounded(auth.authenticate(user, password)).await }
                })
                .await?;
            let (reads, commits) = self.queues();
            Ok::<_, etcd_client::Error>(Arc::new(Connection {
                client,
                signed_tokens: is_signed_token(token.token()),
                token_generation: AtomicU64::new(0),
                refreshing: tokio::sync::Mutex::new(()),
                reads,
                commits,
            }))
        })
        .await
        .cloned()
    }
}

/// Connects to etcd through a balanced channel that uses only the endpoints that answer
/// (`HealthCheckedChannel`), with TCP_NODELAY on every connection.
///
/// Both matter. etcd-client's own channels send requests to an endpoint that refuses or never
/// answers (see `health.rs`). And with the `tls-openssl` feature,
/// `Client::connect` dials through an OpenSSL connector whose sockets keep Nagle's algorithm
/// on: a gRPC request's frames then wait for the server's delayed ACK, tens of milliseconds
/// per etcd call on Linux.
pub async fn connect(
    endpoints: &[String],
    options: ConnectOptions,
    tls: &ClientTls,
) -> Result<Client, etcd_client::Error> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    if endpoints.iter().all(|e| e.starts_with("http://")) {
        Client::connect_with_balanced_channel(endpoints, Some(options), HealthCheckedChannel(tcp)).await
    } else {
        let https = hyper_openssl::client::legacy::HttpsConnector::with_connector(tcp, connector(tls)?)
            .map_err(|e| etcd_client::Error::InvalidArgs(format!("etcd TLS: {e}")))?;
        Client::connect_with_balanced_channel(endpoints, Some(options), HealthCheckedChannel(https)).await
    }
}

/// The OpenSSL client settings for etcd ([`crate::tls::connector`]).
fn connector(tls: &ClientTls) -> Result<openssl::ssl::SslConnectorBuilder, etcd_client::Error> {
    crate::tls::connector(tls).map_err(|e| etcd_client::Error::InvalidArgs(format!("etcd TLS: {e}")))
}

/// Where etcd-client sends the endpoints a balanced channel is to use.
type EndpointUpdates = tokio::sync::mpsc::Sender<
    tonic::transport::channel::Change<tonic::codegen::http::Uri, tonic::transport::Endpoint>,
>;

/// A balanced channel over one lazily connected tonic `Channel` per endpoint, dialled by
/// `connector` (plain TCP or OpenSSL over it), each used only while it answers
/// ([`Endpoints`]); the balancer picks between two usable ones at random (equal load, like
/// tonic's own balanced channel).
struct HealthCheckedChannel<C>(C);

impl<C> etcd_client::BalancedChannelBuilder for HealthCheckedChannel<C>
where
    C: tower::Service<tonic::codegen::http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Error: Send,
    tower::BoxError: From<C::Error>,
    C::Future: Send,
{
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(etcd_client::Channel, EndpointUpdates), Self::Error> {
        use tonic::transport::channel::Change;
        use tower::discover::Change as Discovered;
        let connector = self.0;
        let (updates, mut changes) =
            tokio::sync::mpsc::channel::<Change<tonic::codegen::http::Uri, tonic::transport::Endpoint>>(16);
        let (discovered, discover) = tokio::sync::mpsc::channel(16);
        let endpoints = Endpoints::new();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let change = match change {
                    Change::Insert(key, endpoint) => {
                        let channel = endpoint.connect_with_connector_lazy(connector.clone());
                        let checked = endpoints.add(key.to_string(), channel.clone(), health_probe(channel));
                        Discovered::Insert(key, tower::load::Constant::new(checked, 0usize))
                    }
                    Change::Remove(key) => Discovered::Remove(key),
                };
                if discovered.send(Ok::<_, tower::BoxError>(change)).await.is_err() {
                    return;
                }
            }
        });
        let balance =
            tower::balance::p2c::Balance::new(tokio_stream::wrappers::ReceiverStream::new(discover));
        let channel = tower::buffer::Buffer::new(balance, buffer_size);
        Ok((etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(channel)), updates))
    }
}

/// Asks an endpoint etcd's gRPC health check (no auth needed): it answers if it says it
/// serves, or has no health service to ask (it still answered).
pub fn health_probe(channel: tonic::transport::Channel) -> Probe {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    Box::new(move || {
        let mut client = HealthClient::new(channel.clone());
        Box::pin(async move {
            match client.check(HealthCheckRequest { service: String::new() }).await {
                Ok(reply) => reply.into_inner().status == ServingStatus::Serving as i32,
                Err(status) => status.code() == tonic::Code::Unimplemented,
            }
        })
    })
}
