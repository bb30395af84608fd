//! Serving the portal's port: accepting connections, bounding them, handing them to hyper.
//!
//! # Why not `axum::serve`
//!
//! A portal must keep answering while a stranger tries to tie it up — above all
//! `/mirror_status`, which a load balancer asks to find the primary. A *slowloris* client opens
//! many connections and sends a request's header lines one at a time, slowly enough to keep each
//! connection alive and never finish a request. Three bounds stop it, and `axum::serve` offers
//! none of them, so this module accepts connections itself and runs hyper's HTTP/1 server on each:
//!
//! - **a header deadline**: a request's headers must arrive complete within [`HEADER_TIMEOUT`]
//!   of the server starting to wait for them, or the connection is closed (hyper's
//!   `header_read_timeout`). It also ends a kept-alive connection that stays silent that long;
//! - **a share per source**: one source address holds at most [`PORTAL_CONNECTIONS_PER_SOURCE`]
//!   connections, so one attacker cannot take the slots of the browsers and balancers elsewhere;
//! - **a total**: at most [`PORTAL_CONNECTIONS`] connections in all, and each connection closed
//!   after [`PORTAL_IDLE`] without a byte moving (a body or an answer trickled slowly).
//!
//! A connection over a limit is closed at once, unread. Each request carries its peer's address
//! as axum's `ConnectInfo`, which the login throttle (`auth`) keys on.
//!
//! # Shutdown
//!
//! When `stop` resolves the listener closes, every connection finishes the request it is serving
//! and closes (hyper's graceful shutdown), and [`serve`] returns once all have.
//!
//! # Left out
//!
//! HTTP/2 (browsers speak it only over TLS, which the portal does not offer) and TLS itself.
//! Behind a NAT or Docker's published ports every client may share one source address; the share
//! per source then bounds them all together, which is why it is far above what a browser needs.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use crate::limits::{ConnectionSlots, GuardedStream, PORTAL_IDLE};

/// Connections the portal serves at once.
pub const PORTAL_CONNECTIONS: usize = 512;
/// Connections one source address may hold at once: more than a browser (six per host), a load
/// balancer or the benchmark's 64 clients open, a quarter of the total.
pub const PORTAL_CONNECTIONS_PER_SOURCE: usize = 128;
/// How long a request's headers may take to arrive (and a kept-alive connection may stay
/// silent between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The portal's limits, in one place so a test can shrink them.
#[derive(Debug, Clone, Copy)]
pub struct PortalLimits {
    /// Connections at once, in all.
    pub connections: usize,
    /// Connections at once from one source address.
    pub per_source: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may go without a byte read or written.
    pub idle: Duration,
}

impl Default for PortalLimits {
    fn default() -> Self {
        PortalLimits {
            connections: PORTAL_CONNECTIONS,
            per_source: PORTAL_CONNECTIONS_PER_SOURCE,
            header_timeout: HEADER_TIMEOUT,
            idle: PORTAL_IDLE,
        }
    }
}

/// Serves `app` on `listener` with the portal's limits until `stop` resolves, then lets the
/// open connections finish their requests.
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    serve_with(listener, app, PortalLimits::default(), stop).await
}

/// [`serve`] with chosen limits.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: PortalLimits,
    stop: impl Future<Output = ()>,
) {
    // Every client is a stranger here: the share per address is the limit that matters, the
    // strangers' total is the port's total.
    let slots = ConnectionSlots::keeping_room(
        "portal",
        limits.connections,
        limits.connections,
        limits.per_source,
    );
    // Each connection task holds a sender; `recv` ends once every task has dropped its own.
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let (stopping_tx, stopping) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::warn!("portal: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over a limit: the stream is dropped here, closed unread (the refusal is logged).
        let Some(slot) = slots.try_take_from(peer.ip(), false) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = GuardedStream::new(stream, limits.idle, slot);
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits.header_timeout,
            stopping.clone(),
            running.clone(),
        ));
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(running);
    let _ = all_done.recv().await;
}

/// One connection: hyper's HTTP/1 server with the header deadline, each request tagged with the
/// peer's address.
async fn serve_connection(
    stream: GuardedStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    _running: mpsc::Sender<()>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!("portal: connection from {peer} ended: {err}");
                }
                return;
            }
            changed = stopping.changed(), if !shutting_down => {
                // Told to stop (or the server is gone): finish the request in flight, then close.
                let _ = changed;
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The address a request came from, as an extractor (see [`peer_ip`]).
pub struct Peer(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_ip(&parts.extensions)))
    }
}

/// The address a request came from (`0.0.0.0` when it came without one, as in tests that call
/// the router directly).
pub fn peer_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}
