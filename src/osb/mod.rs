//! The OSB domain: ids, catalog, plan options, bind parameters, request/outcome types, errors
//! and the broker trait.
//!
//! Invariant: nothing in here imports actix-web or etcd-client.

pub mod bind_parameters;
pub mod broker;
pub mod catalog;
pub mod error;
pub mod ids;
pub mod model;
pub mod plan_options;

pub use broker::ServiceBroker;
pub use error::{BrokerError, BrokerResult};
pub use ids::{BindingId, InstanceId, InvalidId};
