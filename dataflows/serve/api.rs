//! `POST /v1/search`: the API's state ([`Api`]) and its searches by vector, segment id or WAV clip, answered from
//! the cache while the spaces searched are unchanged.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_connectors::kafka::Producer;
use chorus_connectors::wav::{self, DecodeLimits};
use chorus_operators::cause::Cause;
use chorus_operators::embed::Embedder;
use chorus_operators::index::{self, Filter, Registry};
use chorus_operators::metrics::Metrics;
use chorus_operators::record::SegmentId;
use chorus_operators::refine::SharedRefinements;
use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::reply::{Kind, Refusal, bad, content_kind, failure, query_failure};
use crate::Error;
use crate::config::Config;
use crate::search::{self, Answer};

/// Neighbours a query may ask for at most.
const MAX_K: usize = 1_000;

/// Beam width a query may ask for at most.
const MAX_EF: usize = 10_000;

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    pub(super) config: Arc<Config>,
    pub(super) spaces: Registry,
    pub(super) metrics: Metrics,
    /// Opened on the first WAV query.
    pub(super) embedder: Arc<Mutex<Option<Embedder>>>,
    pub(super) cache: Arc<Mutex<Cache>>,
    pub(super) refinements: SharedRefinements,
    /// Produces given labels to the labels topic.
    pub(super) labels: Option<Producer>,
    /// The segments' audio last read from the archive, newest last: the page asks for a hit's audio and its
    /// spectrogram one after the other.
    pub(super) audio: Arc<Mutex<std::collections::VecDeque<(SegmentId, Bytes)>>>,
}

/// Segments' audio the API keeps at hand (about 10 MiB of 5 s windows).
pub(super) const AUDIO_CACHED: usize = 32;

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
pub(super) struct SearchOptions {
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

pub(super) async fn search(
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

impl Api {
    fn search_json(&self, body: SearchBody) -> Result<SearchAnswer, Refusal> {
        let (spaces, filter, k, ef) = self.options(&body.options)?;
        let (label, vector, excluded) = match (body.vector, body.segment_id) {
            (Some(vector), None) => ("vector".to_owned(), vector, None),
            (None, Some(id)) => {
                let id: SegmentId = id.parse().map_err(|_| bad(format!("segment_id '{id}' is not 16 hex digits")))?;
                (format!("segment {id}"), search::segment_vector(&self.spaces, &spaces, id)?, Some(id))
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
        let samples = search::clip_samples(&self.config, audio)?;
        let queries = {
            let mut embedder = self.embedder.lock().unwrap_or_else(|e| e.into_inner());
            if embedder.is_none() {
                *embedder = Some(search::open_embedder(&self.config)?);
            }
            let embedder = embedder.as_mut().expect("opened above");
            search::embed_samples(&self.config, embedder, &samples, "clip")?
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
            queries.iter_mut().for_each(|q| search::annotate(&mut q.hits, &self.refinements));
            return Ok(SearchAnswer { took_ms: 0.0, cached: true, spaces: spaces.to_vec(), queries });
        }
        self.metrics.query_cache.with_label_values(&["miss"]).inc();
        let answers = queries
            .into_iter()
            .map(|(label, vector)| {
                let hits = search::search(&self.config, &self.spaces, spaces, &vector, k, ef, filter, excluded)?;
                Ok(Answer { query: label, hits })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, answers.clone());
        let mut answers = answers;
        answers.iter_mut().for_each(|q| search::annotate(&mut q.hits, &self.refinements));
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
                let mut hits = search::refined_search(
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
                search::annotate(&mut hits, &self.refinements);
                Ok(Answer { query: label, hits })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(SearchAnswer { took_ms: 0.0, cached: false, spaces: spaces.to_vec(), queries: answers })
    }
}
