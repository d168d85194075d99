//! `POST /v1/labels`: labels given to segments (or taken away), checked and produced to the labels topic.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_connectors::kafka::{self, Acks, LabelEvent};
use chorus_operators::index;
use chorus_operators::record::SegmentId;
use serde::Deserialize;
use serde_json::json;

use super::api::Api;
use super::reply::{Kind, Refusal, bad, content_kind, failure};

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

pub(super) async fn labels(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
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
