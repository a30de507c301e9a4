//! The OSB domain: ids, catalog, request/outcome types, errors and the broker trait.
//!
//! Invariant: nothing in here imports actix-web or etcd-client.

pub mod broker;
pub mod catalog;
pub mod error;
pub mod ids;
pub mod model;

pub use broker::ServiceBroker;
pub use error::{BrokerError, BrokerResult};
pub use ids::{BindingId, InstanceId, InvalidId};
