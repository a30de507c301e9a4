//! etcd's six gRPC services as the proxy serves them, one file each: what is forwarded (with
//! the caller's credentials, [`crate::backend::forward`]), what the firewall checks first, and
//! what is answered by the proxy itself or refused. Every RPC of etcd's API has an answer here;
//! none hangs. Requests are never logged: some carry passwords (Authenticate) or values.
//!
//! - `kv`: Range, Put, DeleteRange, Txn forwarded (leases and quotas checked); Compact for
//!   operators only.
//! - `watch`: the watch stream, forwarded both ways, ended when its user is revoked.
//! - `lease`: grants recorded with their owner; keep-alive, revoke, time-to-live and listing
//!   only of the caller's own leases.
//! - `auth`: Authenticate forwarded, the token learnt; auth administration refused.
//! - `maintenance`: Status (the proxy's view for tenants); the rest refused.
//! - `cluster`: MemberList from the proxy's view; member administration refused.

mod auth;
mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::pin::Pin;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::backend::Backend;
use crate::caller::{self, Caller, Tokens};
use crate::encryption::DataKeys;
use crate::firewall::PREFIX;
use crate::leases::LeaseOwners;
use crate::quotas::Quotas;
use crate::revocation::Bindings;
use crate::streams::OpenStreams;
use crate::view::View;

/// Methods of a service trait that the proxy does not serve ([`crate::firewall::not_served`]):
/// PERMISSION_DENIED for tenants, UNIMPLEMENTED for operators; `$why` completes "it would ...".
macro_rules! not_served {
    ($why:expr; $($method:ident($request:ident) -> $response:ident = $rpc:literal;)*) => {
        $(
            // The signature #[tonic::async_trait] gives an async method (it does not see into
            // a macro's output); the answer is ready at once.
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                request: tonic::Request<$request>,
            ) -> std::pin::Pin<Box<
                dyn std::future::Future<Output = Result<tonic::Response<$response>, tonic::Status>>
                    + Send
                    + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                // A revoked token is refused like any tenant's.
                let caller = self.0.tokens.caller(request.metadata()).unwrap_or($crate::caller::Caller::Tenant(None));
                Box::pin(std::future::ready(Err($crate::firewall::not_served(&caller, $rpc, $why))))
            }
        )*
    };
}
use not_served;

/// A stream of responses, or of the status that ends it.
pub type Responses<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What every service needs; shared by all of them.
pub struct Shared {
    pub backend: Backend,
    /// Shared with the revocation task ([`crate::revocation::Bindings::follow`]).
    pub tokens: Arc<Tokens>,
    pub owners: LeaseOwners,
    pub view: View,
    /// The broker's binding records: each login of a broker-made user is checked there.
    pub bindings: Bindings,
    /// Every open watch and keep-alive stream by user, to end a revoked user's.
    pub streams: OpenStreams,
    /// Instances' data keys: values sealed and unsealed with them.
    pub data_keys: DataKeys,
    /// Instances' quotas: writes beyond them refused.
    pub quotas: Quotas,
}

/// The proxy: one value implementing all of etcd's services (cheap to clone).
#[derive(Clone)]
pub struct Proxy(Arc<Shared>);

impl Proxy {
    pub fn new(shared: Shared) -> Self {
        Proxy(Arc::new(shared))
    }

    /// Who calls, for a request that must carry a token. etcd has auth enabled: without a
    /// token it would refuse keys but still serve leases, and with a client certificate
    /// between the proxy and etcd it would take the proxy's certificate for the caller.
    fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        match caller::token(metadata) {
            Some(_) => self.0.tokens.caller(metadata).map_err(|revoked| revoked.status()),
            None => Err(Status::unauthenticated(format!(
                "{PREFIX}: the request carries no auth token: authenticate with a user name and password first"
            ))),
        }
    }

    /// Who calls, for a stream that must be ended when its user is revoked: only a user the
    /// proxy knows. A token the proxy did not see issued gets etcd's own answer for a token it
    /// does not know, on which etcd's clients log in again (through the proxy) and retry.
    fn known_caller(&self, metadata: &MetadataMap) -> Result<(Caller, String), Status> {
        let caller = self.caller(metadata)?;
        match caller.user() {
            Some(user) => {
                let user = user.to_owned();
                Ok((caller, user))
            }
            None => Err(Status::unauthenticated(caller::INVALID_TOKEN)),
        }
    }
}
