//! The HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text format) and, when given one, the query API,
//! served on a small tokio runtime of their own, beside the timely workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chorus_connectors::Fatal;
use chorus_connectors::kafka::BrokerStatus;
use prometheus::{Encoder, Registry, TextEncoder};

use super::api::Api;
use super::routes;
use crate::Error;

/// What the endpoints report on.
#[derive(Clone)]
pub struct Probes {
    /// Metrics for `/metrics`.
    pub registry: Registry,
    /// Whether the broker answers (none: no broker to wait for, as in `chorus serve`).
    pub broker: Option<Arc<BrokerStatus>>,
    /// Set when the job is failing.
    pub fatal: Fatal,
    /// Says why the refinement is paused, when it is (none: no refinement here).
    pub refinement: Option<crate::refine::Pause>,
}

/// The running server; dropping it stops it.
pub struct HttpServer {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `listen` (failing at once when the address is taken) and serves from a thread of its own.
    pub fn start(listen: SocketAddr, probes: Probes, api: Option<Api>) -> Result<HttpServer, Error> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| Error::Usage(format!("cannot listen on {listen}: {e}; set http.listen (or http.enabled)")))?;
        let address = listener.local_addr().map_err(|e| Error::Usage(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| Error::Usage(e.to_string()))?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(probes);
        let serves_api = api.is_some();
        let app = match api {
            Some(api) => app.merge(routes::routes(api)),
            None => app,
        };
        let thread = std::thread::Builder::new()
            .name("chorus-http".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let Ok(runtime) = runtime else {
                    tracing::error!("Cannot start the HTTP runtime; the endpoints are off.");
                    return;
                };
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                    let served = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    if let Err(error) = served.await {
                        tracing::error!(%error, "The HTTP server stopped.");
                    }
                });
            })
            .map_err(|e| Error::Usage(format!("cannot start the HTTP thread: {e}")))?;
        if serves_api {
            tracing::info!(%address, "Serving /healthz, /readyz, /metrics and the query API under /v1/.");
        } else {
            tracing::info!(%address, "Serving /healthz, /readyz and /metrics.");
        }
        Ok(HttpServer { address, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the broker may go unanswered before the job reports itself not ready.
const BROKER_GRACE: Duration = Duration::from_secs(3);

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    if let Some(failure) = probes.fatal.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: the job is failing: {failure}\n"));
    }
    // A paused refinement degrades the job, which still ingests and answers: it stays ready, and says so.
    let ready = match probes.refinement.as_ref().and_then(crate::refine::Pause::reason) {
        Some(reason) => format!("ready; the refinement is paused (ingestion goes on): {reason}\n"),
        None => "ready\n".to_owned(),
    };
    let Some(broker) = &probes.broker else { return (StatusCode::OK, ready) };
    match broker.unanswered_for() {
        Some(silence) if silence > BROKER_GRACE => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: broker unreachable for {:.1} s: {}\n",
                silence.as_secs_f64(),
                broker.last_error().unwrap_or_default()
            ),
        ),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the broker has not answered yet\n".into()),
        Some(_) => (StatusCode::OK, ready),
    }
}

async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    let mut text = Vec::new();
    match TextEncoder::new().encode(&probes.registry.gather(), &mut text) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_owned())], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            format!("cannot encode metrics: {e}\n").into_bytes(),
        ),
    }
}
