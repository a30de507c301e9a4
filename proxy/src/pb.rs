//! etcd's v3 API as build.rs generated it: messages, the servers the proxy implements and the
//! clients it forwards with. Generated code only; nothing here is written by hand.

#![allow(clippy::all, missing_docs, rustdoc::all)]

/// etcd's RPCs and their messages (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Keys, values and events (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}
