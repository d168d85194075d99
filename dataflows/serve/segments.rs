//! `GET /v1/segments`, `/v1/segments/{id}` (with its audio and spectrogram) and `/v1/spaces`: what the indices and
//! the archive hold.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_operators::index;
use chorus_operators::record::SegmentId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{AUDIO_CACHED, Api};
use super::reply::{failure, query_failure};
use crate::Error;
use crate::search::{self, Annotation, SegmentView, Whereabouts};

/// `GET /v1/segments/{id}`: the segment, the model that embedded it and what the refinement says of it.
#[derive(Serialize)]
struct Described {
    #[serde(flatten)]
    segment: SegmentView,
    model: String,
    #[serde(flatten)]
    annotation: Annotation,
}

/// A view as a JSON value, then the body: a map's keys in the order the API has always given them.
fn json_of(view: &impl Serialize) -> Response {
    match serde_json::to_value(view) {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => failure(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

pub(super) async fn segment(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<SegmentId>() else {
        return failure(StatusCode::BAD_REQUEST, format!("'{id}' is not a segment id (16 hex digits)"));
    };
    for space in api.spaces.spaces() {
        let Some(shared) = api.spaces.get(&space) else { continue };
        let Some(point) = index::read(&shared).point(id) else { continue };
        let refinements = api.refinements.read().unwrap_or_else(|e| e.into_inner());
        let answer = Described {
            segment: SegmentView::indexed(&api.config, id, space, point),
            model: api.config.model.name.clone(),
            annotation: Annotation::of(id, &refinements),
        };
        return json_of(&answer);
    }
    failure(StatusCode::NOT_FOUND, format!("segment {id} is not indexed in any space"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecentQuery {
    limit: Option<usize>,
    space: Option<String>,
}

/// `GET /v1/segments?limit=N&space=S`: the latest segments by start time, latest first.
pub(super) async fn recent(State(api): State<Api>, query: Result<Query<RecentQuery>, QueryRejection>) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return query_failure(&rejection, "limit, space"),
    };
    let limit = query.limit.unwrap_or(20);
    if !(1..=1_000).contains(&limit) {
        return failure(StatusCode::BAD_REQUEST, format!("limit {limit} is outside 1..=1000"));
    }
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
                latest.push((point.start_micros, id, space.clone(), point));
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
    let segments: Vec<SegmentView> =
        latest.into_iter().map(|(_, id, space, point)| SegmentView::indexed(&api.config, id, space, point)).collect();
    axum::Json(json!({ "segments": segments })).into_response()
}

impl Api {
    /// Where segment `id` lies, from the index: space, sensor and start time.
    fn whereabouts(&self, id: SegmentId) -> Option<Whereabouts> {
        self.spaces.spaces().into_iter().find_map(|space| {
            let point = index::read(&self.spaces.get(&space)?).point(id)?;
            Some(Whereabouts { space: Some(space), sensor: Some(point.sensor), start_micros: Some(point.start_micros) })
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
        let found = tokio::task::spawn_blocking(move || search::segment_wav(&config, id, &whereabouts)).await;
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
pub(super) async fn segment_audio(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.wav(&id).await {
        Ok(wav) => ([(header::CONTENT_TYPE, "audio/wav")], wav).into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/segments/{id}/spectrogram.png`: its log-mel spectrogram with axes.
pub(super) async fn segment_spectrogram(State(api): State<Api>, Path(id): Path<String>) -> Response {
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

pub(super) async fn spaces(State(api): State<Api>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_segment_is_the_json_it_always_was() {
        let start = 1_000_000;
        let answer = Described {
            segment: SegmentView::new(SegmentId(0xab), "s".into(), "pole-1".into(), start, start + 5_000_000),
            model: "m".into(),
            annotation: Annotation { label: Some("owl".into()), label_score: Some(0.9), cluster: None },
        };
        let score: f32 = 0.9;
        let before = json!({
            "segment_id": "00000000000000ab",
            "space": "s",
            "sensor": "pole-1",
            "start_time": "1970-01-01T00:00:01Z",
            "end_time": "1970-01-01T00:00:06Z",
            "model": "m",
            "label": "owl",
            "label_score": score,
        });
        let now = serde_json::to_value(&answer).unwrap();
        assert_eq!(now, before);
        assert_eq!(serde_json::to_string(&now).unwrap(), serde_json::to_string(&before).unwrap());
    }
}
