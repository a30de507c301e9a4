//! bench-proxy's relays: processes in the proxy's place that do less than the proxy, so that
//! the same run shows what each layer of its cost is.
//!
//! - `xtask tcp-relay` copies bytes both ways without reading them: what a second process and
//!   two more loopback hops cost by themselves;
//! - `xtask http2-relay` terminates HTTP/2 on both sides with the h2 crate (the one tonic and
//!   hyper use) and passes every stream's headers, data and trailers on as they come, without
//!   decoding gRPC: the least any proxy that reads requests (the method of each, to refuse
//!   some) must do, without tonic, hyper or protobuf above it.
//!
//! Both run on one thread, like the proxy's default, with TCP_NODELAY on both sides, and give
//! each client connection its own connection to etcd.

use anyhow::{Context, Result};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};

/// Flags of `xtask tcp-relay` and `xtask http2-relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Where clients connect, e.g. 127.0.0.1:2479.
    #[arg(long)]
    pub listen: String,
    /// Where each client's connection goes, e.g. 127.0.0.1:2379.
    #[arg(long)]
    pub to: String,
}

/// The TCP relay: runs until accepting fails.
pub fn tcp(args: RelayArgs) -> Result<()> {
    run(Relay::Tcp, args)
}

/// The HTTP/2 relay: runs until accepting fails.
pub fn http2(args: RelayArgs) -> Result<()> {
    run(Relay::Http2, args)
}

/// What a relay does with each connection.
#[derive(Debug, Clone, Copy)]
enum Relay {
    Tcp,
    Http2,
}

/// Binds `args.listen` (a failure names it) and runs `relay` there.
fn run(relay: Relay, args: RelayArgs) -> Result<()> {
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    on_one_thread(relay, listener, args.to)
}

/// Accepts connections on `listener` in a current-thread runtime and gives each one its own
/// connection to `to`, both with TCP_NODELAY; returns only when accepting fails.
fn on_one_thread(relay: Relay, listener: std::net::TcpListener, to: String) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let Ok(mut server) = TcpStream::connect(&to).await else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            tokio::task::spawn_local(async move {
                match relay {
                    Relay::Tcp => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Relay::Http2 => {
                        if let Err(e) = carry_http2(client, server).await {
                            eprintln!("http2-relay: a connection ended: {e:#}");
                        }
                    }
                }
            });
        }
    })
}

/// One client connection: each stream it opens is opened on `server` with the same headers,
/// and both directions are passed on frame by frame until both ends finish.
async fn carry_http2(client: TcpStream, server: TcpStream) -> Result<()> {
    let (upstream, connection) = h2::client::handshake(server).await.context("handshake with etcd")?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let mut incoming = h2::server::handshake(client).await.context("handshake with the client")?;
    while let Some(stream) = incoming.accept().await {
        let (request, respond) = stream.context("accepting a stream")?;
        let upstream = upstream.clone();
        tokio::task::spawn_local(async move {
            let _ = carry_stream(request, respond, upstream).await;
        });
    }
    Ok(())
}

/// One stream: the request up, the response down, at the same time (a watch streams both
/// ways). Dropping the answer's side on an error resets the stream.
async fn carry_stream(
    request: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    upstream: h2::client::SendRequest<Bytes>,
) -> Result<()> {
    let (parts, body) = request.into_parts();
    let mut upstream = upstream.ready().await?;
    let finished = body.is_end_stream();
    let (response, mut sending) = upstream.send_request(http::Request::from_parts(parts, ()), finished)?;
    let up = async move {
        if !finished {
            pass_on(body, &mut sending).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let down = async move {
        let (parts, body) = response.await?.into_parts();
        let finished = body.is_end_stream();
        let mut sending = respond.send_response(http::Response::from_parts(parts, ()), finished)?;
        if !finished {
            pass_on(body, &mut sending).await?;
        }
        Ok(())
    };
    // etcd may answer and end the stream before the request's own end arrives, and then
    // refuse the rest of it: the request side's errors must not cut the answer short. The
    // answer's end ends the request side too.
    let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
    tokio::select! {
        answered = &mut down => answered,
        _ = &mut up => down.await,
    }
}

/// Data frames from `from` to `to` as they come (giving `from`'s window back for each), then
/// its trailers, or the end of the stream.
async fn pass_on(mut from: RecvStream, to: &mut SendStream<Bytes>) -> Result<()> {
    while let Some(data) = from.data().await {
        let data = data?;
        let size = data.len();
        to.send_data(data, false)?;
        from.flow_control().release_capacity(size)?;
    }
    match from.trailers().await? {
        Some(trailers) => to.send_trailers(trailers)?,
        None => to.send_data(Bytes::new(), true)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_tcp_relay_carries_bytes_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut connection, _) = server.accept().await.unwrap();
            let mut asked = [0u8; 4];
            connection.read_exact(&mut asked).await.unwrap();
            connection.write_all(&[asked, *b"pong"].concat()).await.unwrap();
        });
        let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        relay.set_nonblocking(true).unwrap();
        let listen = relay.local_addr().unwrap();
        std::thread::spawn(move || on_one_thread(Relay::Tcp, relay, to));

        let mut client = TcpStream::connect(listen).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 8];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pingpong");
    }

    #[tokio::test]
    async fn the_http2_relay_carries_headers_data_and_trailers_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (connection, _) = server.accept().await.unwrap();
            let mut connection = h2::server::handshake(connection).await.unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            assert_eq!(request.uri().path(), "/etcdserverpb.KV/Range");
            assert_eq!(request.headers()["token"], "t");
            let mut body = request.into_body();
            let asked = body.data().await.unwrap().unwrap();
            let mut sending = respond.send_response(http::Response::new(()), false).unwrap();
            sending.send_data([&asked[..], b"pong"].concat().into(), false).unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            sending.send_trailers(trailers).unwrap();
        });
        let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        relay.set_nonblocking(true).unwrap();
        let listen = relay.local_addr().unwrap();
        std::thread::spawn(move || on_one_thread(Relay::Http2, relay, to));

        let (client, connection) =
            h2::client::handshake(TcpStream::connect(listen).await.unwrap()).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::post(format!("http://{listen}/etcdserverpb.KV/Range"))
            .header("token", "t")
            .body(())
            .unwrap();
        let (response, mut sending) = client.ready().await.unwrap().send_request(request, false).unwrap();
        sending.send_data(Bytes::from_static(b"ping"), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        assert_eq!(&body.data().await.unwrap().unwrap()[..], b"pingpong");
        assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    }
}
