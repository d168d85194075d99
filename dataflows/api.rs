//! The query API, served by the job beside its metrics and by `chorus serve` over what a job left on disk:
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
//! With `"refined": true` a search ranks by refined embeddings (see [`query::refined_search`]); hits carry the
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

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_connectors::kafka::{self, Acks, LabelEvent, Producer};
use chorus_connectors::wav::{self, DecodeLimits};
use chorus_operators::cause::Cause;
use chorus_operators::embed::Embedder;
use chorus_operators::index::{self, Filter, Registry};
use chorus_operators::metrics::Metrics;
use chorus_operators::record::{SegmentId, rfc3339};
use chorus_operators::refine::SharedRefinements;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Error;
use crate::config::Config;
use crate::query::{self, Answer};

/// Neighbours a query may ask for at most.
const MAX_K: usize = 1_000;
/// Beam width a query may ask for at most.
const MAX_EF: usize = 10_000;

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    config: Arc<Config>,
    spaces: Registry,
    metrics: Metrics,
    /// Opened on the first WAV query.
    embedder: Arc<Mutex<Option<Embedder>>>,
    cache: Arc<Mutex<Cache>>,
    refinements: SharedRefinements,
    /// Produces given labels to the labels topic.
    labels: Option<Producer>,
    /// The segments' audio last read from the archive, newest last: the page asks for a hit's audio and its
    /// spectrogram one after the other.
    audio: Arc<Mutex<std::collections::VecDeque<(SegmentId, Bytes)>>>,
}

/// Segments' audio the API keeps at hand (about 10 MiB of 5 s windows).
const AUDIO_CACHED: usize = 32;

impl Api {
    /// An API over the indices in `spaces` and the `refinements` of a job; labels are produced with `labels`.
    pub fn new(
        config: &Config,
        spaces: Registry,
        metrics: Metrics,
        refinements: SharedRefinements,
        labels: Option<Producer>,
    ) -> Api {
        Api {
            config: Arc::new(config.clone()),
            spaces,
            metrics,
            embedder: Arc::new(Mutex::new(None)),
            cache: Arc::new(Mutex::new(Cache::new(config.api.cache_entries))),
            refinements,
            labels,
            audio: Arc::default(),
        }
    }

    /// The `/v1/` routes and the search page, behind the `Host` check, with the body limit and, when a token is set,
    /// the bearer check.
    pub fn routes(self) -> Router {
        let limit = self.config.api.max_body_bytes;
        let token = self.config.api.token.clone();
        let hosts = Arc::new(self.config.api.allowed_hosts.clone());
        let router = Router::new()
            .route("/v1/search", post(search))
            .route("/v1/segments", get(recent))
            .route("/v1/segments/{id}", get(segment))
            .route("/v1/segments/{id}/audio.wav", get(segment_audio))
            .route("/v1/segments/{id}/spectrogram.png", get(segment_spectrogram))
            .route("/v1/spaces", get(spaces))
            .route("/v1/labels", post(labels))
            .fallback(|| async {
                failure(
                    StatusCode::NOT_FOUND,
                    "no such endpoint: see /v1/search, /v1/segments, /v1/segments/{id}, /v1/segments/{id}/audio.wav, \
                     /v1/segments/{id}/spectrogram.png, /v1/spaces, /v1/labels",
                )
            })
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self);
        let router = match token {
            Some(token) => router.layer(middleware::from_fn_with_state(Arc::new(token), bearer)),
            None => router,
        };
        // The search page holds no data (it asks the API, with the token when one is set), so it needs none.
        let router = router.route("/", get(page)).route("/search", get(page));
        // Outermost, so that a request for a foreign host learns nothing, not even whether a token is needed.
        router.layer(middleware::from_fn_with_state(hosts, host_check))
    }
}

/// `[api]`: the query API's limits, cache and access.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest request body (a WAV clip), in bytes.
    pub max_body_bytes: usize,
    /// Answers kept in the LRU cache (0: no cache).
    pub cache_entries: usize,
    /// When set, `/v1/` requests need `Authorization: Bearer <token>`. `env:NAME` reads it from variable NAME.
    pub token: String,
    /// The p99 search latency `chorus bench-query` holds the API to, in milliseconds.
    pub sla_p99_ms: f64,
    /// Host names (no port) the API and the search page answer to besides IP addresses and `localhost`: the names
    /// people or a proxy reach this server by. A request for any other `Host` is refused (421), so a web page cannot
    /// reach the API through a DNS name it points at this machine (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Longest WAV clip a search takes, in seconds (1..=3600): a longer one is refused (413) from its WAV header,
    /// before its samples are decoded, since embedding every window of it holds the model for long.
    pub max_clip_seconds: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 16 << 20,
            cache_entries: 1_024,
            token: String::new(),
            sla_p99_ms: 50.0,
            allowed_hosts: Vec::new(),
            max_clip_seconds: 60,
        }
    }
}

/// Validated API settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiSettings {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// LRU capacity.
    pub cache_entries: usize,
    /// Bearer token, if one is required.
    pub token: Option<String>,
    /// p99 target.
    pub sla_p99_ms: f64,
    /// Host names answered besides IP addresses and `localhost`: lower case, without a trailing dot.
    pub allowed_hosts: Vec<String>,
    /// Longest WAV clip a search takes, in seconds.
    pub max_clip_seconds: u32,
}

impl ApiConfig {
    /// Validates; resolves `env:NAME` tokens.
    pub fn build(&self) -> Result<ApiSettings, chorus_operators::FieldError> {
        use chorus_operators::FieldError;
        if !(1_024..=1 << 30).contains(&self.max_body_bytes) {
            return Err(FieldError::new(
                "max_body_bytes",
                format!("{} is outside 1024..=1073741824", self.max_body_bytes),
            ));
        }
        let token = match self.token.strip_prefix("env:") {
            Some(name) => Some(std::env::var(name).map_err(|_| {
                FieldError::new("token", format!("names environment variable {name}, which is not set"))
            })?),
            None if self.token.is_empty() => None,
            None => Some(self.token.clone()),
        };
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(FieldError::new("token", "is shorter than 16 characters"));
        }
        if !(self.sla_p99_ms > 0.0 && self.sla_p99_ms.is_finite()) {
            return Err(FieldError::new(
                "sla_p99_ms",
                format!("{} is not a positive number of milliseconds", self.sla_p99_ms),
            ));
        }
        let mut allowed_hosts = Vec::with_capacity(self.allowed_hosts.len());
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let wrong = |why: &str| FieldError::new("allowed_hosts", format!("entry {i} '{host}' {why}"));
            if host.is_empty() {
                return Err(wrong("is empty: give a host name such as chorus.example.org"));
            }
            if host.contains('/') {
                return Err(wrong(
                    "is not a bare host name: give the name alone, not a URL or path (chorus.example.org)",
                ));
            }
            if host.contains(':') || host.contains('[') {
                return Err(wrong(
                    "has a port or is an IPv6 address: give the host name alone (every port is answered, and IP \
                     addresses always are)",
                ));
            }
            let name = normal_host(host);
            let label_ok = |label: &str| {
                (1..=63).contains(&label.len())
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(wrong("is not a host name (labels of letters, digits and '-', joined by '.')"));
            }
            allowed_hosts.push(name);
        }
        if !(1..=3_600).contains(&self.max_clip_seconds) {
            return Err(FieldError::new(
                "max_clip_seconds",
                format!("{} is outside 1..=3600 seconds", self.max_clip_seconds),
            ));
        }
        Ok(ApiSettings {
            max_body_bytes: self.max_body_bytes,
            cache_entries: self.cache_entries,
            token,
            sla_p99_ms: self.sla_p99_ms,
            allowed_hosts,
            max_clip_seconds: self.max_clip_seconds,
        })
    }
}

/// A host name as compared: DNS names are case-insensitive, and `name.` is the same name as `name`.
fn normal_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The host of an authority (`host[:port]`, as in a `Host` header), or `None` when it is not one. An IPv6 address
/// keeps its brackets.
fn host_part(authority: &str) -> Option<&str> {
    let end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(end);
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    (port_ok && !host.is_empty()).then_some(host)
}

/// Whether the API answers to `authority` (a `Host` header's value): an IP address (IPv6 in brackets), `localhost`,
/// or a name in `allowed` (normalised as by [`normal_host`]). A DNS rebinding attack needs a name of the attacker's
/// own, which is none of these.
fn host_allowed(authority: &str, allowed: &[String]) -> bool {
    let Some(host) = host_part(authority) else { return false };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = normal_host(host);
    name == "localhost" || allowed.contains(&name)
}

/// Refuses (421) a request for a host the API does not answer to (see [`host_allowed`]), and (400) one that names
/// no host or more than one.
async fn host_check(State(allowed): State<Arc<Vec<String>>>, request: HttpRequest, next: Next) -> Response {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    // In absolute form (`GET http://name/ HTTP/1.1`) the target names the host and the Host header is ignored
    // (RFC 9112, section 3.2.2).
    let authority = match (request.uri().authority(), first, second) {
        (Some(authority), _, _) => authority.as_str().to_owned(),
        (None, Some(_), Some(_)) => {
            return failure(StatusCode::BAD_REQUEST, "the request has more than one Host header; send one");
        }
        (None, Some(value), None) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        (None, None, _) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "the request has no Host header: send one (every HTTP/1.1 client does); the API answers only to IP \
                 addresses, localhost and the names in api.allowed_hosts",
            );
        }
    };
    if host_allowed(&authority, &allowed) {
        return next.run(request).await;
    }
    let host = host_part(&authority).unwrap_or(&authority);
    failure(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this server does not answer to host '{host}': to reach it by that name, add \"{host}\" to \
             api.allowed_hosts (IP addresses and localhost are always answered)"
        ),
    )
}

/// A JSON error response.
fn failure(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    (status, axum::Json(json!({ "error": { "status": status.as_u16(), "reason": reason } }))).into_response()
}

/// The token of an `Authorization` header of the Bearer scheme, whose name is case-insensitive (RFC 7235); the
/// token is taken as sent.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim_start_matches(' '))
}

async fn bearer(State(token): State<Arc<String>>, request: HttpRequest, next: Next) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match given {
        Some(given) if equal_in_constant_time(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => failure(StatusCode::UNAUTHORIZED, "the bearer token is wrong"),
        None => failure(StatusCode::UNAUTHORIZED, "this API needs an `Authorization: Bearer <token>` header"),
    }
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A search as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    vector: Option<Vec<f32>>,
    segment_id: Option<String>,
    #[serde(flatten)]
    options: SearchOptions,
}

/// What every search may say (in the JSON body, or in the query string with a WAV body).
#[derive(Debug, Default, Deserialize, Hash)]
struct SearchOptions {
    k: Option<usize>,
    ef: Option<usize>,
    space: Option<String>,
    /// Sensors; in a query string, comma-separated.
    #[serde(default, deserialize_with = "sensors")]
    sensors: Vec<String>,
    /// RFC 3339: segments starting at or after.
    from: Option<String>,
    /// RFC 3339: segments starting before.
    to: Option<String>,
    /// Rank by refined embeddings.
    refined: Option<bool>,
}

fn sensors<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sensors {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Sensors::deserialize(d)? {
        Sensors::List(list) => list,
        Sensors::Joined(joined) => {
            joined.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        }
    })
}

#[derive(Serialize)]
struct SearchAnswer {
    took_ms: f64,
    cached: bool,
    spaces: Vec<String>,
    queries: Vec<Answer>,
}

/// Why a request fails, as a status and a reason.
struct Refusal(StatusCode, String);

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        let status = match &error {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Usage(_) | Error::Input { .. } | Error::Operator(chorus_operators::Error::Vector(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, error.to_string())
    }
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, reason.into())
}

/// The JSON error for a query string that does not parse, naming the field (`options` lists those there are).
fn query_failure(rejection: &QueryRejection, options: &str) -> Response {
    let text = rejection.body_text();
    let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    failure(StatusCode::BAD_REQUEST, format!("the query string does not parse: {detail} (options: {options})"))
}

async fn search(
    State(api): State<Api>,
    query: Result<Query<SearchOptions>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return query_failure(&rejection, "k, ef, space, sensors, from, to, refined"),
    };
    let kind = match content_kind(&headers) {
        Ok(kind) => kind,
        Err(given) => {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{given}: send content-type: application/json ({{\"vector\": [...]}} or {{\"segment_id\": \
                     \"...\"}}) or audio/wav (a clip)"
                ),
            );
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is larger than api.max_body_bytes = {} bytes", api.config.api.max_body_bytes)
            } else {
                rejection.body_text()
            };
            return failure(status, reason);
        }
    };
    let worker = tokio::task::spawn_blocking(move || {
        let answer = match kind {
            Kind::Json => serde_json::from_slice::<SearchBody>(&body)
                .map_err(|e| bad(format!("the JSON body does not describe a search: {e}")))
                .and_then(|body| api.search_json(body)),
            Kind::Wav => api.search_wav(query, &body),
        };
        (api, answer)
    });
    let (api, answer) = match worker.await {
        Ok(done) => done,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, format!("the search failed: {e}")),
    };
    let label = match kind {
        Kind::Wav => "audio",
        Kind::Json => "vector",
    };
    api.metrics.query_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(mut answer) => {
            answer.took_ms = started.elapsed().as_secs_f64() * 1e3;
            axum::Json(answer).into_response()
        }
        Err(Refusal(status, reason)) => failure(status, reason),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Json,
    Wav,
}

/// What a body is, from its content type; otherwise what was sent instead, for the refusal. A body without a
/// content type is not taken for JSON: a page on any site can send one (a Blob in a no-cors fetch) without the
/// browser asking this server first, whereas `application/json` or `audio/wav` makes the browser ask (CORS), and
/// this server never says yes.
fn content_kind(headers: &HeaderMap) -> Result<Kind, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("the request has no content type".into());
    };
    let content_type = String::from_utf8_lossy(value.as_bytes());
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Kind::Json),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(Kind::Wav),
        _ => Err(format!("content type '{content_type}' is not taken")),
    }
}

impl Api {
    fn search_json(&self, body: SearchBody) -> Result<SearchAnswer, Refusal> {
        let (spaces, filter, k, ef) = self.options(&body.options)?;
        let (label, vector, excluded) = match (body.vector, body.segment_id) {
            (Some(vector), None) => ("vector".to_owned(), vector, None),
            (None, Some(id)) => {
                let id: SegmentId = id.parse().map_err(|_| bad(format!("segment_id '{id}' is not 16 hex digits")))?;
                (format!("segment {id}"), query::segment_vector(&self.spaces, &spaces, id)?, Some(id))
            }
            (Some(_), Some(_)) => return Err(bad("give either vector or segment_id, not both")),
            (None, None) => return Err(bad("give vector (an array of numbers) or segment_id")),
        };
        if vector.len() != self.config.model.dim {
            return Err(bad(format!(
                "the vector has {} numbers; this index holds {}",
                vector.len(),
                self.config.model.dim
            )));
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(bad("the vector holds a NaN or an infinity"));
        }
        self.answer(&spaces, vec![(label, vector)], k, ef, &filter, excluded, &body.options)
    }

    fn search_wav(&self, options: SearchOptions, body: &[u8]) -> Result<SearchAnswer, Refusal> {
        let (spaces, filter, k, ef) = self.options(&options)?;
        let max = self.config.api.max_clip_seconds;
        // decode judges the length from the WAV header, before it converts a sample.
        let limits = DecodeLimits { max_seconds: f64::from(max), ..DecodeLimits::default() };
        let audio = wav::decode(body, &limits).map_err(|rejection| match rejection.cause {
            Cause::TooLong => Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the WAV clip is too long to search with: {} (api.max_clip_seconds = {max}); cut it shorter",
                    rejection.reason
                ),
            ),
            _ => bad(format!("the WAV clip cannot be used: {}", rejection.reason)),
        })?;
        // Resampling needs no model: it is done before the model's lock is taken.
        let samples = query::clip_samples(&self.config, audio)?;
        let queries = {
            let mut embedder = self.embedder.lock().unwrap_or_else(|e| e.into_inner());
            if embedder.is_none() {
                *embedder = Some(query::open_embedder(&self.config)?);
            }
            let embedder = embedder.as_mut().expect("opened above");
            query::embed_samples(&self.config, embedder, &samples, "clip")?
        };
        if queries.is_empty() {
            return Err(bad("the WAV clip is shorter than the shortest window the job indexes"));
        }
        self.answer(&spaces, queries, k, ef, &filter, None, &options)
    }

    /// The spaces, filter, k and ef a search asks for, checked.
    fn options(&self, options: &SearchOptions) -> Result<(Vec<String>, Filter, usize, usize), Refusal> {
        let known = self.spaces.spaces();
        let spaces = match &options.space {
            Some(space) if known.contains(space) => vec![space.clone()],
            Some(space) => {
                return Err(Refusal(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no space '{space}' (spaces: {})",
                        if known.is_empty() { "none yet".into() } else { known.join(", ") }
                    ),
                ));
            }
            None => known,
        };
        let k = options.k.unwrap_or(10);
        if !(1..=MAX_K).contains(&k) {
            return Err(bad(format!("k = {k} is outside 1..={MAX_K}")));
        }
        let ef = options.ef.unwrap_or(self.config.index.ef_search);
        if !(1..=MAX_EF).contains(&ef) {
            return Err(bad(format!("ef = {ef} is outside 1..={MAX_EF}")));
        }
        let time = |field: &str, value: &Option<String>| -> Result<Option<i64>, Refusal> {
            value
                .as_deref()
                .map(|v| {
                    chrono::DateTime::parse_from_rfc3339(v)
                        .map(|t| t.timestamp_micros())
                        .map_err(|_| bad(format!("{field} '{v}' is not an RFC 3339 time such as 2026-05-01T05:00:00Z")))
                })
                .transpose()
        };
        let filter = Filter {
            sensors: options.sensors.clone(),
            from_micros: time("from", &options.from)?,
            to_micros: time("to", &options.to)?,
        };
        if let (Some(from), Some(to)) = (filter.from_micros, filter.to_micros)
            && from >= to
        {
            return Err(bad("from must be before to"));
        }
        Ok((spaces, filter, k, ef))
    }

    /// Answers from the cache when every space searched is unchanged since, otherwise searches and caches.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        spaces: &[String],
        queries: Vec<(String, Vec<f32>)>,
        k: usize,
        ef: usize,
        filter: &Filter,
        excluded: Option<SegmentId>,
        options: &SearchOptions,
    ) -> Result<SearchAnswer, Refusal> {
        if options.refined == Some(true) {
            return self.answer_refined(spaces, queries, k, ef, filter, excluded);
        }
        let generations: Vec<u64> =
            spaces.iter().map(|s| self.spaces.get(s).map_or(0, |shared| index::read(&shared).generation())).collect();
        let key = {
            let mut hasher = DefaultHasher::new();
            (spaces, &generations, k, ef, options, excluded.map(|id| id.0)).hash(&mut hasher);
            for (label, vector) in &queries {
                label.hash(&mut hasher);
                vector.iter().for_each(|x| x.to_bits().hash(&mut hasher));
            }
            hasher.finish()
        };
        if let Some(mut queries) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            self.metrics.query_cache.with_label_values(&["hit"]).inc();
            // Labels change without an insert: they are filled in at every answer.
            queries.iter_mut().for_each(|q| query::annotate(&mut q.hits, &self.refinements));
            return Ok(SearchAnswer { took_ms: 0.0, cached: true, spaces: spaces.to_vec(), queries });
        }
        self.metrics.query_cache.with_label_values(&["miss"]).inc();
        let answers = queries
            .into_iter()
            .map(|(label, vector)| {
                let hits = query::search(&self.config, &self.spaces, spaces, &vector, k, ef, filter, excluded)?;
                Ok(Answer { query: label, hits })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, answers.clone());
        let mut answers = answers;
        answers.iter_mut().for_each(|q| query::annotate(&mut q.hits, &self.refinements));
        Ok(SearchAnswer { took_ms: 0.0, cached: false, spaces: spaces.to_vec(), queries: answers })
    }

    /// A search by refined embeddings; never cached, since refinements change without inserts.
    fn answer_refined(
        &self,
        spaces: &[String],
        queries: Vec<(String, Vec<f32>)>,
        k: usize,
        ef: usize,
        filter: &Filter,
        excluded: Option<SegmentId>,
    ) -> Result<SearchAnswer, Refusal> {
        if self.refinements.read().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Err(Refusal(
                StatusCode::CONFLICT,
                "refined = true needs refined embeddings, and none exist here: they come from a running job with \
                 [refine] enabled (chorus run), not from chorus serve"
                    .into(),
            ));
        }
        self.metrics.query_cache.with_label_values(&["miss"]).inc();
        let own = excluded.and_then(|id| {
            self.refinements.read().unwrap_or_else(|e| e.into_inner()).get(id.0).and_then(|s| s.refined())
        });
        let answers = queries
            .into_iter()
            .map(|(label, vector)| {
                let mut hits = query::refined_search(
                    &self.config,
                    &self.spaces,
                    &self.refinements,
                    spaces,
                    &vector,
                    own.clone(),
                    k,
                    ef,
                    filter,
                    excluded,
                )?;
                query::annotate(&mut hits, &self.refinements);
                Ok(Answer { query: label, hits })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(SearchAnswer { took_ms: 0.0, cached: false, spaces: spaces.to_vec(), queries: answers })
    }
}

async fn segment(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<SegmentId>() else {
        return failure(StatusCode::BAD_REQUEST, format!("'{id}' is not a segment id (16 hex digits)"));
    };
    let window_micros = i64::from(api.config.model.window) * 1_000_000 / i64::from(api.config.model.sample_rate);
    for space in api.spaces.spaces() {
        let Some(shared) = api.spaces.get(&space) else { continue };
        if let Some(point) = index::read(&shared).point(id) {
            let mut answer = json!({
                "segment_id": id.to_string(),
                "space": space,
                "sensor": point.sensor,
                "start_time": rfc3339(point.start_micros * 1_000),
                "end_time": rfc3339((point.start_micros + window_micros) * 1_000),
                "model": api.config.model.name,
            });
            let refinements = api.refinements.read().unwrap_or_else(|e| e.into_inner());
            if let Some(state) = refinements.get(id.0) {
                if let Some((label, score)) = refinements.label(id.0) {
                    answer["label"] = json!(label);
                    answer["label_score"] = json!(score);
                }
                if let Some(cluster) = state.cluster {
                    answer["cluster"] = json!(SegmentId(cluster).to_string());
                }
            }
            return axum::Json(answer).into_response();
        }
    }
    failure(StatusCode::NOT_FOUND, format!("segment {id} is not indexed in any space"))
}

/// The search page: pick or upload a clip, see and hear its neighbours, label them.
async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("search.html")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecentQuery {
    limit: Option<usize>,
    space: Option<String>,
}

/// `GET /v1/segments?limit=N&space=S`: the latest segments by start time, latest first.
async fn recent(State(api): State<Api>, query: Result<Query<RecentQuery>, QueryRejection>) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return query_failure(&rejection, "limit, space"),
    };
    let limit = query.limit.unwrap_or(20);
    if !(1..=1_000).contains(&limit) {
        return failure(StatusCode::BAD_REQUEST, format!("limit {limit} is outside 1..=1000"));
    }
    let window_micros = i64::from(api.config.model.window) * 1_000_000 / i64::from(api.config.model.sample_rate);
    // A walk over every point: off the server's thread.
    let spaces = api.spaces.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut latest = Vec::new();
        for space in spaces.spaces() {
            if query.space.as_ref().is_some_and(|s| *s != space) {
                continue;
            }
            let Some(shared) = spaces.get(&space) else { continue };
            for (id, point) in index::read(&shared).latest(limit) {
                latest.push((point.start_micros, id, space.clone(), point.sensor));
            }
        }
        latest.sort_by_key(|entry| std::cmp::Reverse((entry.0, entry.1)));
        latest.truncate(limit);
        latest
    })
    .await;
    let latest = match found {
        Ok(latest) => latest,
        Err(error) => return failure(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let segments: Vec<serde_json::Value> = latest
        .into_iter()
        .map(|(start, id, space, sensor)| {
            json!({
                "segment_id": id.to_string(),
                "space": space,
                "sensor": sensor,
                "start_time": rfc3339(start * 1_000),
                "end_time": rfc3339((start + window_micros) * 1_000),
            })
        })
        .collect();
    axum::Json(json!({ "segments": segments })).into_response()
}

impl Api {
    /// Where segment `id` lies, from the index: space, sensor and start time.
    fn whereabouts(&self, id: SegmentId) -> Option<crate::archive::Whereabouts> {
        self.spaces.spaces().into_iter().find_map(|space| {
            let point = index::read(&self.spaces.get(&space)?).point(id)?;
            Some(crate::archive::Whereabouts {
                space: Some(space),
                sensor: Some(point.sensor),
                start_micros: Some(point.start_micros),
            })
        })
    }

    /// The WAV file the archive keeps with segment `id` (given as text).
    async fn wav(&self, id: &str) -> Result<Bytes, Response> {
        let Ok(id) = id.parse::<SegmentId>() else {
            return Err(failure(StatusCode::BAD_REQUEST, format!("'{id}' is not a segment id (16 hex digits)")));
        };
        let cached = self.audio.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(i, _)| *i == id).cloned();
        if let Some((_, wav)) = cached {
            return Ok(wav);
        }
        let Some(whereabouts) = self.whereabouts(id) else {
            return Err(failure(StatusCode::NOT_FOUND, format!("segment {id} is not indexed in any space")));
        };
        let config = self.config.clone();
        let found = tokio::task::spawn_blocking(move || crate::archive::segment_wav(&config, id, &whereabouts)).await;
        match found {
            Ok(Ok((_, wav))) => {
                let wav = Bytes::from(wav);
                let mut cache = self.audio.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= AUDIO_CACHED {
                    cache.pop_front();
                }
                cache.push_back((id, wav.clone()));
                Ok(wav)
            }
            Ok(Err(Error::NotFound(reason))) => Err(failure(
                StatusCode::NOT_FOUND,
                format!("{reason} (a new segment reaches the archive within archive.flush_interval_seconds)"),
            )),
            Ok(Err(error)) => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())),
            Err(error) => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())),
        }
    }
}

/// `GET /v1/segments/{id}/audio.wav`: the segment's audio as the model heard it.
async fn segment_audio(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.wav(&id).await {
        Ok(wav) => ([(header::CONTENT_TYPE, "audio/wav")], wav).into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/segments/{id}/spectrogram.png`: its log-mel spectrogram with axes.
async fn segment_spectrogram(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let wav = match api.wav(&id).await {
        Ok(wav) => wav,
        Err(response) => return response,
    };
    let drawn = tokio::task::spawn_blocking(move || {
        let audio = chorus_connectors::wav::decode(&wav, &Default::default()).map_err(|r| r.reason)?;
        let spectrogram = crate::spectrogram::Spectrogram::compute(&audio.samples, audio.sample_rate);
        Ok::<_, String>(crate::spectrogram::render(&spectrogram).png)
    })
    .await;
    match drawn {
        Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Ok(Err(reason)) => {
            failure(StatusCode::INTERNAL_SERVER_ERROR, format!("the archived audio is damaged: {reason}"))
        }
        Err(error) => failure(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn spaces(State(api): State<Api>) -> Response {
    let mut out = Vec::new();
    for space in api.spaces.spaces() {
        let Some(shared) = api.spaces.get(&space) else { continue };
        let index = index::read(&shared);
        let tiers: HashMap<&str, serde_json::Value> = index
            .usage()
            .into_iter()
            .map(|(tier, u)| {
                (tier.name(), json!({ "shards": u.shards, "points": u.points, "bytes": u.bytes, "bytes_per_point": u.bytes_per_point() }))
            })
            .collect();
        out.push(json!({ "space": space, "points": index.len(), "tiers": tiers }));
    }
    axum::Json(json!({ "spaces": out })).into_response()
}

/// A `POST /v1/labels` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    labels: Vec<GivenLabel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenLabel {
    segment_id: String,
    /// `null` takes the segment's label away.
    label: Option<String>,
}

/// Labels at most per request.
const MAX_LABELS: usize = 10_000;

async fn labels(State(api): State<Api>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    // JSON, said so: a web page elsewhere cannot send that without the browser asking this server first (CORS).
    match content_kind(&headers) {
        Ok(Kind::Json) => {}
        Ok(Kind::Wav) => {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "labels are JSON, not audio: send content-type: application/json",
            );
        }
        Err(given) => {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{given}: labels are JSON, send content-type: application/json"),
            );
        }
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return failure(rejection.status(), rejection.body_text()),
    };
    let worker = tokio::task::spawn_blocking(move || api.give_labels(&body));
    match worker.await {
        Ok(Ok(accepted)) => (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": accepted }))).into_response(),
        Ok(Err(Refusal(status, reason))) => failure(status, reason),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("the labels were not taken: {e}")),
    }
}

impl Api {
    /// Checks every label, then produces them all to the labels topic and waits for the broker to take them.
    fn give_labels(&self, body: &[u8]) -> Result<usize, Refusal> {
        let body: LabelsBody = serde_json::from_slice(body).map_err(|e| {
            bad(format!("the JSON body does not describe labels ({{\"labels\": [{{\"segment_id\": ..., \"label\": ...}}]}}): {e}"))
        })?;
        if body.labels.len() > MAX_LABELS {
            return Err(bad(format!("{} labels in one request; send at most {MAX_LABELS}", body.labels.len())));
        }
        let known = self.spaces.spaces();
        let mut events = Vec::with_capacity(body.labels.len());
        for (i, given) in body.labels.into_iter().enumerate() {
            let segment: SegmentId = given
                .segment_id
                .parse()
                .map_err(|_| bad(format!("labels[{i}]: segment_id '{}' is not 16 hex digits", given.segment_id)))?;
            if !known.iter().any(|s| self.spaces.get(s).is_some_and(|shared| index::read(&shared).contains(segment))) {
                return Err(Refusal(
                    StatusCode::NOT_FOUND,
                    format!("labels[{i}]: segment {segment} is not indexed in any space"),
                ));
            }
            if let Some(label) = &given.label {
                kafka::check_label(label).map_err(|reason| bad(format!("labels[{i}]: {reason}")))?;
            }
            events.push(LabelEvent { segment, label: given.label });
        }
        let Some(producer) = &self.labels else {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server cannot reach Kafka to record labels".into(),
            ));
        };
        let acks = Arc::new(Acks::default());
        for event in &events {
            producer
                .send(&self.config.kafka.labels_topic, &kafka::label_record(event), &acks, 0)
                .map_err(|e| Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while acks.outstanding() > 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some(failure) = acks.failure() {
            return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, failure));
        }
        if acks.outstanding() > 0 {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the broker did not take the labels within 10 s; they may still arrive in {}",
                    self.config.kafka.labels_topic
                ),
            ));
        }
        Ok(events.len())
    }
}

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
    let probes = crate::http::Probes {
        registry: metrics_registry,
        broker: None,
        fatal: chorus_connectors::Fatal::default(),
        refinement: None,
    };
    let producer = Producer::open(&config.kafka).ok();
    let api = Api::new(config, registry, metrics, SharedRefinements::default(), producer);
    let server = crate::http::HttpServer::start(listen, probes, Some(api))?;
    tracing::info!(address = %server.address(), spaces = spaces.len(), points, "Query API ready.");
    while !stop.requested.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// A least-recently-used map of answers by key.
struct Cache {
    capacity: usize,
    tick: u64,
    entries: HashMap<u64, (u64, Vec<Answer>)>,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache { capacity, tick: 0, entries: HashMap::new() }
    }

    fn get(&mut self, key: u64) -> Option<Vec<Answer>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(used, answers)| {
            *used = tick;
            answers.clone()
        })
    }

    fn put(&mut self, key: u64, answers: Vec<Answer>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&key)
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (self.tick, answers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_evicts_the_least_recently_used_answer() {
        let answer = |q: &str| vec![Answer { query: q.into(), hits: Vec::new() }];
        let mut cache = Cache::new(2);
        cache.put(1, answer("a"));
        cache.put(2, answer("b"));
        assert!(cache.get(1).is_some());
        cache.put(3, answer("c"));
        assert!(cache.get(2).is_none(), "2 was least recently used");
        assert!(cache.get(1).is_some() && cache.get(3).is_some());
        let mut off = Cache::new(0);
        off.put(1, answer("a"));
        assert!(off.get(1).is_none());
    }

    #[test]
    fn the_api_listens_on_this_machine_only_unless_told_otherwise() {
        let listen = crate::http::HttpConfig::default().build().unwrap().unwrap();
        assert!(listen.ip().is_loopback(), "{listen}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(equal_in_constant_time(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!equal_in_constant_time(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!equal_in_constant_time(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn api_config_resolves_and_checks_its_token() {
        assert_eq!(ApiConfig::default().build().unwrap().token, None);
        let short = ApiConfig { token: "secret".into(), ..Default::default() };
        assert_eq!(short.build().unwrap_err().field, "token");
        let missing = ApiConfig { token: "env:CHORUS_TEST_TOKEN_THAT_IS_NOT_SET".into(), ..Default::default() };
        assert!(missing.build().unwrap_err().message.contains("CHORUS_TEST_TOKEN_THAT_IS_NOT_SET"));
    }

    #[test]
    fn r13_hosts_answered_are_ip_addresses_localhost_and_the_allowed_names() {
        let allowed = vec!["chorus.example.org".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9464",
            "[2001:db8::7]:8080",
            "localhost",
            "LOCALHOST:9464",
            "localhost.:9464",
            "chorus.example.org",
            "Chorus.Example.Org:443",
            "chorus.example.org.",
            "localhost:",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in [
            "",
            ":9464",
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "chorus.example.org.evil.example",
            "example.org",
            "::1",
            "[::1",
            "[::1]x",
            "[localhost]",
            "[127.0.0.1]",
            "127.1",
            "localhost:http",
            "localhost:80:80",
            "user@localhost",
            "localhost/",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
        assert!(!host_allowed("chorus.example.org", &[]));
        assert_eq!(host_part("[::1]:9464"), Some("[::1]"));
        assert_eq!(host_part("evil.example:9464"), Some("evil.example"));
        assert_eq!(host_part("evil.example:port"), None);
    }

    #[test]
    fn r13_the_bearer_scheme_is_any_case_and_the_token_as_sent() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer   abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer aBc"), Some("aBc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearers abc"), None);
    }

    #[test]
    fn r13_json_bodies_need_their_content_type_said() {
        let headers = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            }
            headers
        };
        assert!(matches!(content_kind(&headers(Some("application/json"))), Ok(Kind::Json)));
        assert!(matches!(content_kind(&headers(Some("Application/JSON; charset=utf-8"))), Ok(Kind::Json)));
        assert!(matches!(content_kind(&headers(Some("audio/x-wav"))), Ok(Kind::Wav)));
        assert_eq!(content_kind(&headers(None)).err().as_deref(), Some("the request has no content type"));
        assert_eq!(
            content_kind(&headers(Some("text/plain"))).err().as_deref(),
            Some("content type 'text/plain' is not taken")
        );
    }

    #[test]
    fn r13_api_config_checks_allowed_hosts_and_max_clip_seconds() {
        let defaults = ApiConfig::default().build().unwrap();
        assert_eq!((defaults.allowed_hosts, defaults.max_clip_seconds), (Vec::<String>::new(), 60));
        let hosts = |list: &[&str]| ApiConfig {
            allowed_hosts: list.iter().map(|h| (*h).to_owned()).collect(),
            ..Default::default()
        };
        let built = hosts(&["Chorus.Example.Org.", "birds-1", "a_b.local"]).build().unwrap();
        assert_eq!(built.allowed_hosts, ["chorus.example.org", "birds-1", "a_b.local"]);
        for bad in
            ["", "chorus.example.org:9464", "https://chorus.example.org/", "chorus/x", "[::1]", "a b", "a..b", "."]
        {
            let error = hosts(&["ok.example", bad]).build().unwrap_err();
            assert_eq!(error.field, "allowed_hosts", "{bad}");
            assert!(error.message.starts_with(&format!("entry 1 '{bad}' ")), "{bad}: {}", error.message);
        }
        for (seconds, ok) in [(0, false), (1, true), (3_600, true), (3_601, false)] {
            let built = ApiConfig { max_clip_seconds: seconds, ..Default::default() }.build();
            assert_eq!(built.is_ok(), ok, "{seconds}");
            if let Err(error) = built {
                assert_eq!(error.field, "max_clip_seconds");
            }
        }
    }
}
