//! gRPC over TLS: the accept loop that turns the gRPC listener's TCP connections into TLS
//! streams for tonic.
//!
//! tonic serves any stream of connections (`serve_with_incoming_shutdown`), so TLS here is the
//! webhook's rustls setup (`webhook::tls`): the same [`ReloadingCert`](crate::webhook::tls::ReloadingCert)
//! resolver, so a renewed certificate is served to new connections without a restart, and the
//! ring provider. tonic's own `tls-ring` server feature would load the certificate once.
//!
//! Handshakes run in their own tasks, bounded in number and time, so a slow or silent client
//! delays nobody else; a failed handshake (a plaintext client, an untrusted certificate on the
//! client's side, no `h2` in the client's ALPN) closes that connection only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// TLS handshakes in progress at once; more connections are closed at accept. Sidecars
/// reconnect with backoff, so a burst (a coordinator restart with many gates) is absorbed.
const MAX_HANDSHAKES: usize = 128;
/// Established connections waiting for tonic to take them.
const READY_QUEUE: usize = 16;

/// A TLS connection from the gRPC listener, as tonic serves it. A newtype so that it reports
/// the TCP peer as its connect info (tonic's own `TlsStream` impl needs its TLS features, and
/// `Request::remote_addr` then looks elsewhere).
#[derive(Debug)]
pub(crate) struct TlsIo(TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` until `stop`, and yields every connection whose TLS handshake
/// succeeded. The stream ends once `stop` fires.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: TlsAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<Result<TlsIo, io::Error>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, tx, stop));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    ready: mpsc::Sender<Result<TlsIo, io::Error>>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        // Reap finished handshakes so the set stays as small as the live ones.
        while handshakes.try_join_next().is_some() {}
        let Some((tcp, peer, permit)) =
            crate::accept::next(&listener, &permits, &stop, "gRPC", "TLS handshakes").await
        else {
            break;
        };
        // As tonic's own listener does: the control stream carries small, latency-bound
        // messages (votes).
        let _ = tcp.set_nodelay(true);
        let (tls, ready) = (tls.clone(), ready.clone());
        handshakes.spawn(async move {
            let _permit = permit;
            if let Some(io) = crate::webhook::tls::handshake("gRPC", &tls, tcp, peer).await {
                // Fails only when the server stopped: the connection is dropped then.
                let _ = ready.send(Ok(TlsIo(io))).await;
            }
        });
    }
    // Handshakes still running would only hand connections to a server that is stopping.
    handshakes.abort_all();
}
