//! The Auth service: Authenticate is forwarded, and the token etcd answers is learnt as the
//! user's ([`crate::caller::Tokens`]): the only way the proxy learns who calls. A user the
//! broker made is checked against its binding record first ([`crate::revocation`]): the
//! token of an unbound or expired binding is not handed out. Everything
//! else is the operators' administration of users and roles, refused to tenants (a tenant's
//! role could not do it on etcd either, but the proxy says so without asking etcd).

use tonic::{Request, Response, Status};

use super::{not_served, Proxy};
use crate::backend::forward;
use crate::firewall::PREFIX;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::revocation;

const WHY: &str = "administer the cluster's users, roles and authentication";

#[tonic::async_trait]
impl Auth for Proxy {
    /// The request holds a password: it is forwarded, never logged. The binding is checked
    /// after etcd accepted the password, so that a wrong password learns nothing of it.
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let user = message.name.clone();
        let answer = self.0.backend.auth().authenticate(forward(&metadata, message)).await?;
        if answer.get_ref().token.is_empty() {
            return Ok(answer);
        }
        match self.0.bindings.check(&user).await {
            Ok(Some(change)) => revocation::apply(&change, &self.0.tokens, &self.0.streams),
            Ok(None) => {}
            Err(e) => return Err(Status::unavailable(format!("{PREFIX}: {e}"))),
        }
        self.0.tokens.learn(&answer.get_ref().token, &user).map_err(|revoked| revoked.status())?;
        Ok(answer)
    }

    not_served! { WHY;
        auth_enable(AuthEnableRequest) -> AuthEnableResponse = "AuthEnable";
        auth_disable(AuthDisableRequest) -> AuthDisableResponse = "AuthDisable";
        auth_status(AuthStatusRequest) -> AuthStatusResponse = "AuthStatus";
        user_add(AuthUserAddRequest) -> AuthUserAddResponse = "UserAdd";
        user_get(AuthUserGetRequest) -> AuthUserGetResponse = "UserGet";
        user_list(AuthUserListRequest) -> AuthUserListResponse = "UserList";
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = "UserDelete";
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse = "UserChangePassword";
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse = "UserGrantRole";
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse = "UserRevokeRole";
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = "RoleAdd";
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = "RoleGet";
        role_list(AuthRoleListRequest) -> AuthRoleListResponse = "RoleList";
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = "RoleDelete";
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse = "RoleGrantPermission";
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse = "RoleRevokePermission";
    }
}
