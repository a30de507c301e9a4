//! Compiles etcd's v3 API (proto/, see proto/README.md) into tonic servers, which the proxy
//! implements, and clients, with which it forwards to etcd. protoc comes from `PROTOC` when set
//! (the BOSH package's vendored one), else from PATH (scripts/install-tools.sh installs it).

fn main() {
    let root = "proto";
    println!("cargo:rerun-if-changed={root}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/etcd/api/etcdserverpb/rpc.proto"], &[root])
        .unwrap_or_else(|e| {
            panic!("compiling etcd's protobufs (is protoc installed? run scripts/install-tools.sh): {e}")
        });
}
