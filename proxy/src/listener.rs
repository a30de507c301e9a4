//! Where clients connect: plain TCP, or TLS terminated by the proxy with OpenSSL (the broker's
//! acceptor settings, ALPN h2 as gRPC needs). The proxy terminates TLS: a client certificate
//! cannot be forwarded to etcd through a connection the proxy opens itself, so callers
//! authenticate with their user name and password (docs/proxy.md).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_broker::tls::Identity;
use openssl::ssl::{AlpnError, Ssl, SslAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The OpenSSL acceptor for `identity`, offering only HTTP/2.
pub fn acceptor(identity: &Identity) -> Result<SslAcceptor, etcd_broker::tls::TlsError> {
    let mut builder = etcd_broker::tls::acceptor(identity)?;
    builder.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x02h2", offered).ok_or(AlpnError::NOACK)
    });
    Ok(builder.build())
}

/// A client's TLS connection.
pub struct TlsStream(tokio_openssl::SslStream<TcpStream>);

impl Connected for TlsStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Plain TCP connections with TCP_NODELAY: tonic sets it only on listeners it binds itself,
/// and without it each small response waits for the client's delayed ACK (~40 ms on Linux;
/// measured: a Range through the proxy took 44 ms instead of 0.3).
pub fn plain_incoming(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let tcp = accepted?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    })
}

/// The connections of `listener` after their TLS handshake, each handshake on a task of its
/// own (a slow client holds up nobody); failed handshakes are logged and dropped.
pub fn tls_incoming(listener: TcpListener, acceptor: SslAcceptor) -> ReceiverStream<io::Result<TlsStream>> {
    let (accepted, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accepted.closed() => return,
                next = listener.accept() => match next {
                    Ok(next) => next,
                    Err(e) => {
                        // E.g. out of file descriptors: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                match handshake(tcp, &acceptor).await {
                    Ok(stream) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "a TLS handshake failed"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

async fn handshake(tcp: TcpStream, acceptor: &SslAcceptor) -> io::Result<TlsStream> {
    let ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
        Ok(Ok(())) => Ok(TlsStream(stream)),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}
