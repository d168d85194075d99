//! The servers above the search engine: the HTTP server with the job's probes, and the query API it serves — by the
//! job beside its metrics, and by `chorus serve` over what a job left on disk:
//!
//! - `POST /v1/search` — by vector or segment id (JSON body), or by a WAV clip (body `audio/wav`, options in the
//!   query string); `k`, `ef`, `space` and filters (`sensors`, `from`, `to`).
//! - `GET /v1/segments?limit=N&space=S` — the latest segments by start time.
//! - `GET /v1/segments/{id}` — where and when a segment was recorded.
//! - `GET /v1/segments/{id}/audio.wav`, `GET /v1/segments/{id}/spectrogram.png` — its audio as the model heard it
//!   and its log-mel spectrogram, from the archive's audio column.
//! - `GET /v1/spaces` — the spaces and their index tiers.
//! - `POST /v1/labels` — give segments labels or take them away (`{"labels": [{"segment_id": "...", "label":
//!   "..."}]}`, `"label": null` retracts); they go to the labels topic, which the job reads.
//!
//! With `"refined": true` a search ranks by refined embeddings (see [`crate::search::refined_search`]); hits carry the
//! label, label score and cluster the job's refinement gives them.
//!
//! `GET /` (or `/search`) is the search page: pick an archived call or upload a clip, see and hear the neighbours,
//! label them. It holds no data and needs no token; it asks the API, with the token when one is set.
//!
//! Errors are JSON (`{"error": {"status": 400, "reason": "..."}}`). Bodies are limited to `api.max_body_bytes`
//! and WAV clips to `api.max_clip_seconds`; with `api.token` set, every `/v1/` request needs `Authorization: Bearer
//! <token>`. Answers are cached (LRU of `api.cache_entries`) under the generation of every space they searched, so
//! an insert into a space invalidates exactly the answers that space took part in.
//!
//! What a web page on another site could do through a visitor's browser is closed off: JSON bodies must say
//! `content-type: application/json` (a page can send a body without a content type, or as `text/plain`, without the
//! browser asking this server first), and every route here, the page included, answers only requests whose `Host`
//! is an IP address, `localhost` or a name in `api.allowed_hosts` (a page whose DNS name is rebound to this machine
//! would otherwise be same-origin with the API). A request without a `Host` (HTTP/1.0) is refused too: every
//! HTTP/1.1 client and every browser sends one.

pub mod api;
mod auth;
mod cache;
pub mod http;
mod labels;
mod reply;
mod routes;
mod segments;

use chorus_connectors::kafka::Producer;
use chorus_operators::index;
use chorus_operators::metrics::Metrics;
use chorus_operators::refine::SharedRefinements;

pub use self::api::Api;
pub use self::http::{HttpServer, Probes};
use crate::Error;
use crate::config::Config;

/// `chorus serve`: opens every space of `config` (caught up from the archive) and serves the API on `listen` until
/// `stop` is requested.
pub fn serve(config: &Config, listen: std::net::SocketAddr, stop: &chorus_connectors::stop::Stop) -> Result<(), Error> {
    let spaces = crate::store::known_spaces(config)?;
    let metrics_registry = prometheus::Registry::new();
    let metrics =
        Metrics::register(&metrics_registry).map_err(|e| Error::Job(format!("cannot register metrics: {e}")))?;
    let registry = crate::store::open_registry(config, &spaces, Some(&metrics))?;
    let points: usize = spaces.iter().filter_map(|s| registry.get(s)).map(|s| index::read(&s).len()).sum();
    for space in &spaces {
        if let Some(shared) = registry.get(space) {
            let index = index::read(&shared);
            metrics.index_points.with_label_values(&[space]).set(index.len() as i64);
            for (tier, usage) in index.usage() {
                metrics.index_bytes.with_label_values(&[space.as_str(), tier.name()]).set(usage.bytes as i64);
            }
        }
    }
    let probes = Probes {
        registry: metrics_registry,
        broker: None,
        fatal: chorus_connectors::Fatal::default(),
        refinement: None,
    };
    let producer = Producer::open(&config.kafka).ok();
    let api = Api::new(config, registry, metrics, SharedRefinements::default(), producer);
    let server = HttpServer::start(listen, probes, Some(api))?;
    tracing::info!(address = %server.address(), spaces = spaces.len(), points, "Query API ready.");
    while !stop.requested.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
