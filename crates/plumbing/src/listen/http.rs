//! The HTTP serve loop of every firstmile service: an axum `Router` behind a [`Gate`], over
//! HTTP/1.1 or HTTPS.
//!
//! **Why not `axum::serve`.** It exposes neither hyper's header-read timeout nor a timer, so a
//! client that never finishes its request head holds its connection forever. This loop builds
//! each connection with hyper's HTTP/1 builder and a tokio timer.
//!
//! **Timeouts.**
//! - *Header* (the gate's `opening_timeout`): a new connection must finish its TLS handshake and
//!   send a complete first request head within it ([`super::Limited`] fails its reads after).
//! - *Idle* ([`HttpOptions::idle_timeout`], hyper's `header_read_timeout`): after a response, the
//!   next request head must be complete within it. In the hyper this workspace requires (1.12;
//!   the change is hyper PR #3828) that timer starts when a kept-alive connection goes idle, so
//!   it covers the wait between requests as well as a slow next head (the test
//!   `a_kept_alive_connection_is_closed_after_the_idle_timeout` pins it); before the first
//!   request the shorter header deadline closes first. The services validate `header ≤ idle`.
//! - Neither runs while a request is being served: a request body streamed for hours (HTTP push)
//!   or a response streamed for hours (live viewers) is never cut, and a WebSocket upgrade leaves
//!   hyper altogether (its connection keeps its place on the gate until it closes).
//!
//! **Refusals.** Over a cap, a plain-HTTP connection is answered `503 Service Unavailable` with
//! `Retry-After: 5`, `Connection: close` and a short JSON body
//! (`{"error": "...", "code": "overloaded", "retry_after_s": 5}`), written without reading the
//! request ([`super::Refused::answer`]). An HTTPS connection is closed without a word: answering
//! would cost a TLS handshake, the very work the cap sheds.
//!
//! **Authentication.** [`HttpOptions::authenticate`] looks at each request's headers (the
//! director: `Authorization: Bearer` with the cluster or admin secret); the first request that
//! passes marks its connection authenticated on the gate, so it no longer counts against its
//! address's cap.
//!
//! **Shutdown.** When the shutdown future resolves the listener closes, idle connections close,
//! requests in flight finish (their connections then close), and [`serve`] returns once every
//! connection task has ended. Upgraded connections (WebSocket) are not waited for.
//!
//! Each request gets `ConnectInfo<SocketAddr>` (the peer's address) as an extension, for axum's
//! `ConnectInfo` extractor.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tracing::Instrument;

use super::{Admission, ConnHandle, Gate, Limited, Refusal};

/// Decides from a request's headers whether its connection has proved a credential.
pub type Authenticate = Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>;

/// How connections are served (the caps and the header deadline are the [`Gate`]'s).
#[derive(Clone)]
pub struct HttpOptions {
    /// After a response, the next request head must be complete within this.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), bytes: hyper's read buffer (≥ 8192).
    pub max_header_bytes: usize,
    /// Serve HTTPS with this configuration.
    pub tls: Option<Arc<ServerConfig>>,
    pub authenticate: Option<Authenticate>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("tls", &self.tls.is_some())
            .field("authenticate", &self.authenticate.is_some())
            .finish()
    }
}

/// `Retry-After` of the 503 refusal, seconds.
pub const RETRY_AFTER_S: u64 = 5;

fn refusal_answer(message: &str) -> Arc<[u8]> {
    let body = format!(
        "{{\"error\":\"{message}\",\"code\":\"overloaded\",\"retry_after_s\":{RETRY_AFTER_S}}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_S}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

static FULL: LazyLock<Arc<[u8]>> = LazyLock::new(|| {
    refusal_answer("this server has too many connections open; retry in a few seconds")
});
static PER_IP: LazyLock<Arc<[u8]>> = LazyLock::new(|| {
    refusal_answer("too many connections from your address; close some and retry")
});

/// The bytes a refused plain-HTTP connection gets.
pub fn refusal(reason: Refusal) -> Arc<[u8]> {
    match reason {
        Refusal::Full => FULL.clone(),
        Refusal::PerIp => PER_IP.clone(),
    }
}

/// Serve `router` on `gate` until `shutdown` resolves, then shut down gracefully (see the module
/// docs). Never fails on a connection's error; the `io::Result` is for the services' signatures.
pub async fn serve(
    gate: Gate,
    router: Router,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let options = Arc::new(options);
    let tls = options.tls.clone().map(TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            a = gate.accept() => match a {
                Admission::Admitted(io) => {
                    tasks.spawn(connection(io, router.clone(), options.clone(), tls.clone(), stop_rx.clone()));
                }
                Admission::Refused(r) => {
                    if tls.is_some() {
                        r.close();
                    } else {
                        let answer = refusal(r.reason());
                        r.answer(answer);
                    }
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => reaped(done),
            () = &mut shutdown => break,
        }
    }
    drop(gate);
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        reaped(done);
    }
    Ok(())
}

fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "an HTTP connection task panicked");
    }
}

async fn connection(
    io: Limited<TcpStream>,
    router: Router,
    options: Arc<HttpOptions>,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let conn = io.conn().clone();
    let span = tracing::debug_span!("http_conn", id = conn.id(), peer = %conn.peer());
    async move {
        match tls {
            None => drive(io, conn, router, &options, stop).await,
            // The handshake reads through the gate's stream: its deadline and eviction apply.
            Some(acceptor) => match acceptor.accept(io).await {
                Ok(s) => drive(s, conn, router, &options, stop).await,
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            },
        }
    }
    .instrument(span)
    .await
}

async fn drive<I>(
    io: I,
    conn: ConnHandle,
    router: Router,
    options: &HttpOptions,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = ConnService {
        router,
        conn: conn.clone(),
        authenticate: options.authenticate.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout)
        .keep_alive(true)
        .max_buf_size(options.max_header_bytes.max(8192));
    let c = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut c = std::pin::pin!(c);
    let mut stopping = *stop.borrow();
    if stopping {
        c.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        conn.stats().idle_timed_out();
                    }
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                c.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The per-connection service: marks the connection opened (and authenticated), adds the peer's
/// address, and hands the request to the router.
#[derive(Clone)]
struct ConnService {
    router: Router,
    conn: ConnHandle,
    authenticate: Option<Authenticate>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.conn.opened();
        if let Some(auth) = &self.authenticate
            && !self.conn.is_authenticated()
            && auth(req.headers())
        {
            self.conn.authenticate();
        }
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(self.conn.peer()));
        let mut router = self.router.clone();
        tower_service::Service::call(&mut router, req)
    }
}

/// `Authorization: Bearer <one of secrets>`, compared in constant time (empty secrets never
/// match). For [`HttpOptions::authenticate`].
pub fn bearer_authenticator(secrets: Vec<String>) -> Authenticate {
    let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    Arc::new(move |h: &HeaderMap| {
        let Some(given) = h
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        secrets.iter().fold(false, |ok, s| {
            ok | constant_time_eq(given.as_bytes(), s.as_bytes())
        })
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
