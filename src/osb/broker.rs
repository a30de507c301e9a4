//! The broker contract: one async method per OSB endpoint.
//!
//! The HTTP layer depends only on this trait, so it can be tested against a fake and the etcd
//! implementation can be tested without HTTP.

use async_trait::async_trait;

use super::catalog::Catalog;
use super::error::BrokerResult;
use super::ids::{BindingId, InstanceId};
use super::model::*;

/// An Open Service Broker.
#[async_trait]
pub trait ServiceBroker: Send + Sync + 'static {
    /// `GET /v2/catalog`
    fn catalog(&self) -> &Catalog;

    /// `PUT /v2/service_instances/{instance_id}`
    async fn provision(&self, req: ProvisionRequest) -> BrokerResult<Provisioned>;

    /// `PATCH /v2/service_instances/{instance_id}`
    async fn update(&self, req: UpdateRequest) -> BrokerResult<()>;

    /// `DELETE /v2/service_instances/{instance_id}`
    async fn deprovision(&self, req: DeprovisionRequest) -> BrokerResult<()>;

    /// `GET /v2/service_instances/{instance_id}`
    async fn get_instance(&self, id: &InstanceId) -> BrokerResult<InstanceInfo>;

    /// `GET /v2/service_instances/{instance_id}/last_operation`
    async fn instance_last_operation(&self, id: &InstanceId) -> BrokerResult<LastOperation>;

    /// `PUT /v2/service_instances/{instance_id}/service_bindings/{binding_id}`
    async fn bind(&self, req: BindRequest) -> BrokerResult<Bound>;

    /// `DELETE /v2/service_instances/{instance_id}/service_bindings/{binding_id}`
    async fn unbind(&self, req: UnbindRequest) -> BrokerResult<()>;

    /// `GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}`
    async fn get_binding(&self, instance: &InstanceId, binding: &BindingId) -> BrokerResult<Binding>;

    /// `GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation`
    async fn binding_last_operation(
        &self,
        instance: &InstanceId,
        binding: &BindingId,
    ) -> BrokerResult<LastOperation>;
}
