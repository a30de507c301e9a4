//! Bad input through the proxy, each case sent to etcd directly too: request bodies that are
//! not protobuf, gRPC frames that lie about their length or compression, values around etcd's
//! request size limit. The proxy answers each with a clear gRPC status (etcd's own where etcd
//! decides), never hangs, and keeps serving.

use std::time::Duration;

use etcd_broker_proxy::pb::etcdserverpb::{PutRequest, RangeRequest};
use etcd_broker_proxy::policy::MAX_REQUEST_BYTES;
use http_body_util::BodyExt;
use tonic::codegen::http;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::common::*;

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request etcd applies.
const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What etcd's gRPC server decodes at most: the above and 512 KiB for the envelope.
const ETCD_MAX_RECEIVED_BYTES: usize = ETCD_MAX_REQUEST_BYTES + 512 * 1024;

// The proxy's own bound is above etcd's, so that etcd decides and answers, and bounded.
const _: () = assert!(MAX_REQUEST_BYTES > ETCD_MAX_RECEIVED_BYTES && MAX_REQUEST_BYTES <= 64 * 1024 * 1024);

/// Bodies that no etcd request decodes from: a varint longer than 10 bytes, a length past the
/// end, wire type 7, field number 0.
const GARBAGE: [&[u8]; 4] = [
    &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x0a, 0x10, 0x61],
    &[0x0f],
    &[0x00, 0x01],
];

/// The unary RPCs the garbage is sent to.
const UNARY: [&str; 5] = [
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Auth/Authenticate",
];

/// A gRPC message frame: `compressed` flag, the length `claimed` (big-endian), `payload`.
fn frame(compressed: bool, claimed: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![u8::from(compressed)];
    frame.extend(claimed.to_be_bytes());
    frame.extend(payload);
    frame
}

/// A protobuf message in a well-formed frame.
fn message(payload: &[u8]) -> Vec<u8> {
    frame(false, payload.len() as u32, payload)
}

/// Sends `body` (gRPC frames, written by hand) to `path` at `conn`'s server, as one HTTP/2
/// request with `conn`'s token, and reads the answer to its end: the status it ends with.
/// A server that does not answer within 5 s fails the test.
async fn raw_call(conn: &Conn, url: &str, path: &str, body: Vec<u8>) -> Status {
    let channel = tonic::transport::Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{url}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = &conn.token {
        request = request.header("token", token);
    }
    let request =
        request.body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)))).unwrap();
    let call = async move {
        let response = channel.oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK, "{path}");
        // A status at once (trailers only) or after the body.
        if let Some(status) = Status::from_header_map(response.headers()) {
            return status;
        }
        let collected = response.into_body().collect().await.unwrap();
        Status::from_header_map(collected.trailers().expect("trailers")).expect("grpc-status")
    };
    tokio::time::timeout(Duration::from_secs(5), call).await.unwrap_or_else(|_| panic!("{path} answers"))
}

/// The status of a call, asserting it is an error of `code`; its message.
fn refused_with(status: &Status, code: Code, what: &str) -> String {
    assert_eq!(status.code(), code, "{what}: {}", status.message());
    assert!(!status.message().is_empty(), "{what}: a message says why");
    status.message().to_owned()
}

#[tokio::test]
async fn malformed_requests_get_a_clear_status_and_the_proxy_keeps_serving() {
    let etcd = start_etcd().await;
    let mut proxy = ProxyProcess::start(&etcd).await;
    let through = Conn::login(&proxy.url, "alice").await;
    let direct = Conn::login(&etcd.endpoint(), "alice").await;

    // Bodies that are not protobuf: INTERNAL, like etcd's own answer, for every RPC.
    for garbage in GARBAGE {
        for path in UNARY {
            let what = format!("{path} with {garbage:x?}");
            let proxied = raw_call(&through, &proxy.url, path, message(garbage)).await;
            let why = refused_with(&proxied, Code::Internal, &what);
            assert!(why.contains("decode"), "{what}: {why}");
            let etcds = raw_call(&direct, &etcd.endpoint(), path, message(garbage)).await;
            refused_with(&etcds, Code::Internal, &format!("{what}, directly"));
        }
    }

    // The same inside the streams (watch, keep-alive): the stream ends with the status,
    // it does not hang waiting for a valid request.
    for path in ["/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive"] {
        let proxied = raw_call(&through, &proxy.url, path, message(GARBAGE[0])).await;
        refused_with(&proxied, Code::Internal, path);
    }

    // Frames that lie: a compressed flag without an encoding, a length of 4 GiB.
    let compressed = raw_call(&through, &proxy.url, UNARY[0], frame(true, 3, b"abc")).await;
    refused_with(&compressed, Code::Internal, "compressed without an encoding");
    let huge = raw_call(&through, &proxy.url, UNARY[0], frame(false, u32::MAX, b"abc")).await;
    // (OUT_OF_RANGE is tonic's code for a message over its bound; etcd's grpc-go says
    // RESOURCE_EXHAUSTED.)
    refused_with(&huge, Code::OutOfRange, "a 4 GiB message");
    // An RPC that does not exist.
    let unknown = raw_call(&through, &proxy.url, "/etcdserverpb.KV/Nothing", message(&[])).await;
    assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");

    // Still serving, the same process.
    assert!(proxy.running(), "{}", proxy.log_text());
    let key = format!("{}after", prefix("alice"));
    let put = PutRequest { key: key.clone().into_bytes(), value: b"fine".to_vec(), ..Default::default() };
    through.kv().put(through.req(put)).await.unwrap();
    let read = through.req(RangeRequest { key: key.into_bytes(), ..Default::default() });
    assert_eq!(through.kv().range(read).await.unwrap().into_inner().kvs[0].value, b"fine");
    assert!(!proxy.log_text().contains("panicked"), "{}", proxy.log_text());
}

#[tokio::test]
async fn etcds_request_size_limit_holds_through_the_proxy() {
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start(&etcd).await;
    let through = Conn::login(&proxy.url, "alice").await;
    let direct = Conn::login(&etcd.endpoint(), "alice").await;
    let key = format!("{}huge", prefix("alice"));
    let put = |conn: &Conn, size: usize| {
        let request =
            PutRequest { key: key.clone().into_bytes(), value: vec![b'v'; size], ..Default::default() };
        let (mut kv, request) = (conn.kv(), conn.req(request));
        async move { kv.put(request).await }
    };

    // Just under etcd's limit: written and read back whole.
    let under = ETCD_MAX_REQUEST_BYTES - 1024;
    put(&through, under).await.unwrap();
    let read = RangeRequest { key: key.clone().into_bytes(), ..Default::default() };
    let got = through.kv().range(through.req(read)).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value.len(), under);

    // Just over it, and over what etcd's gRPC server decodes at all: etcd's own answers.
    for size in [ETCD_MAX_REQUEST_BYTES + 1024, ETCD_MAX_RECEIVED_BYTES + 1024] {
        let proxied = put(&through, size).await.unwrap_err();
        let etcds = put(&direct, size).await.unwrap_err();
        assert_eq!(proxied.code(), etcds.code(), "{size} bytes: {proxied:?} vs {etcds:?}");
        assert_eq!(proxied.message(), etcds.message(), "{size} bytes");
    }
    let over = put(&through, ETCD_MAX_REQUEST_BYTES + 1024).await.unwrap_err();
    assert!(over.message().contains("request is too large"), "{over:?}");

    // Over the proxy's own bound: refused before it is read (the frame only claims the size).
    let claimed = u32::try_from(MAX_REQUEST_BYTES + 1).unwrap();
    let status = raw_call(&through, &proxy.url, "/etcdserverpb.KV/Put", frame(false, claimed, b"x")).await;
    refused_with(&status, Code::OutOfRange, "over the proxy's bound");
}
