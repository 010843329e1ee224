//! Accepting connections with a bound on how many are in progress, shared by the listeners
//! that run one task per connection (the webhook and metrics HTTP servers, the gRPC TLS
//! handshakes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The next connection on `listener` with a permit from `permits` (to hold until it is done),
/// or `None` once `stop` fires. A connection accepted while every permit is taken is closed at
/// once; `name` (the listener) and `what` (what a permit stands for) say so in the log line.
pub(crate) async fn next(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    stop: &CancellationToken,
    name: &str,
    what: &str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "{name}: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Some((tcp, peer, permit)),
            Err(_) => {
                tracing::warn!(%peer, "{name}: too many {what} in progress; closing a new connection")
            }
        }
    }
}
