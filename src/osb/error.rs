//! What can go wrong in a broker operation, in OSB terms but without HTTP.
//!
//! The HTTP layer maps each variant to exactly one status code (`http/error.rs`); everything else
//! in the crate only decides *which* of these happened. Descriptions are shown to platform users,
//! so they say what to do and never contain a secret.

use super::ids::InvalidId;
use super::plan_options::Limit;

/// A failed broker operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The request is malformed or names something that does not exist in the catalog (400).
    #[error("{0}")]
    BadRequest(String),
    /// An instance or binding id breaks the id rule (400).
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// GET, PATCH or bind on an instance that does not exist (404).
    #[error("service instance {0} does not exist")]
    InstanceNotFound(String),
    /// GET of a binding that does not exist or is not ready (404).
    #[error("service binding {0} does not exist")]
    BindingNotFound(String),
    /// DELETE of an instance that does not exist (410: the platform treats it as done).
    #[error("service instance {0} does not exist")]
    InstanceGone(String),
    /// DELETE of a binding that does not exist (410).
    #[error("service binding {0} does not exist")]
    BindingGone(String),
    /// The id exists with different attributes (409).
    #[error("{0}")]
    Conflict(String),
    /// Another operation on the same resource is under way (422, `ConcurrencyError`).
    #[error("{0}")]
    Concurrency(String),
    /// The requested change is not supported (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A plan or organization limit is reached (422: the request is well-formed, and may
    /// succeed once something is deleted or the limit raised). The description names the limit.
    #[error("{description}")]
    LimitReached { limit: Limit, description: String },
    /// etcd cannot be reached or refused the broker's own credentials (503).
    #[error("{0}")]
    Unavailable(String),
    /// Broker state is inconsistent, e.g. an unreadable record (500).
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for broker results.
pub type BrokerResult<T> = Result<T, BrokerError>;
