//! What chorus publishes to Kafka, encoded as records: a new segment and a refinement (segments topic), a dead letter
//! (dead-letter topic) and a label (labels topic).

use chorus_operators::record::{DeadLetter, Origin, rfc3339};
use serde::Deserialize;

use super::{
    HEADER_CAUSE, HEADER_ORIGIN, HEADER_PAYLOAD_DROPPED, HEADER_REASON, HEADER_RECORD, HEADER_SPACE, LabelEvent, Record,
};

/// The JSON value published for each new segment (key: the segment id).
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
pub struct SegmentRecord {
    /// 16 hex digits, deterministic for (space, sensor, start sample).
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// RFC 3339 UTC time of the first sample.
    pub start_time: String,
    /// RFC 3339 UTC time just past the last sample.
    pub end_time: String,
    /// Fraction of the window that is recorded audio.
    pub coverage: f32,
    /// Model that embedded the segment.
    pub model: String,
    /// Audio topic, partition and offset of the message holding the segment's first recorded sample.
    pub source: Origin,
}

/// The segments-topic record of a new segment.
pub fn segment_record(segment: &chorus_operators::record::Segment, model: &str) -> Record {
    let id = segment.key.id().to_string();
    let value = SegmentRecord {
        segment_id: id.clone(),
        space: segment.key.space.clone(),
        sensor: segment.key.sensor.clone(),
        start_time: rfc3339(segment.key.start_time()),
        end_time: rfc3339(segment.key.end_time()),
        coverage: segment.coverage,
        model: model.to_owned(),
        source: segment.origin.clone(),
    };
    Record {
        key: Some(id.into_bytes()),
        payload: serde_json::to_vec(&value).expect("a segment record serialises"),
        headers: vec![(HEADER_SPACE.into(), segment.key.space.as_bytes().to_vec())],
    }
}

/// The record of a dead letter: original key, payload and headers, plus the reason, cause and origin headers.
///
/// The record always fits `max_message_bytes`: the payload is dropped first (`chorus.payload_dropped`), then the
/// original headers, then the key is cut (`chorus.key_truncated`); the reason, cause and origin are always kept.
pub fn dead_letter_record(letter: DeadLetter, max_message_bytes: usize) -> Record {
    let size = |headers: &[(String, Vec<u8>)]| headers.iter().map(|(k, v)| 16 + k.len() + v.len()).sum::<usize>();
    let budget = max_message_bytes.saturating_sub(1_024);
    let mut own = vec![(HEADER_REASON.to_owned(), truncated(letter.reason.into_bytes(), (budget / 4).min(2_048)))];
    own.push((HEADER_CAUSE.into(), letter.cause.as_str().as_bytes().to_vec()));
    if let Some(origin) = &letter.origin {
        own.push((HEADER_ORIGIN.into(), origin.to_string().into_bytes()));
    }
    let (mut key, mut headers, mut payload) = (letter.key, letter.headers, letter.payload);
    let used = |key: &Option<Vec<u8>>, headers: &[(String, Vec<u8>)], own: &[(String, Vec<u8>)], payload: &[u8]| {
        key.as_ref().map_or(0, Vec::len) + size(headers) + size(own) + payload.len()
    };
    if used(&key, &headers, &own, &payload) > budget {
        own.push((HEADER_PAYLOAD_DROPPED.into(), format!("{} bytes", payload.len()).into_bytes()));
        payload = Vec::new();
    }
    if used(&key, &headers, &own, &payload) > budget {
        headers.clear();
    }
    if used(&key, &headers, &own, &payload) > budget
        && let Some(k) = key.as_mut()
    {
        own.push(("chorus.key_truncated".into(), format!("{} bytes", k.len()).into_bytes()));
        k.truncate(256);
    }
    headers.extend(own);
    Record { key, payload, headers }
}

fn truncated(mut bytes: Vec<u8>, limit: usize) -> Vec<u8> {
    if bytes.len() > limit {
        bytes.truncate(limit);
        bytes.extend_from_slice("…".as_bytes());
    }
    bytes
}

/// The labels-topic record that gives `segment` a label, or takes it away.
pub fn label_record(event: &LabelEvent) -> Record {
    Record {
        key: Some(event.segment.to_string().into_bytes()),
        payload: event.label.clone().unwrap_or_default().into_bytes(),
        headers: Vec::new(),
    }
}

/// The JSON value published to the segments topic when the refinement changes what it says about a segment (key:
/// the segment id; header `chorus.record` = `refinement`). The latest record per segment holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
pub struct RefinementRecord {
    /// The segment.
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// The label that reached it, if any.
    pub label: Option<String>,
    /// The label's share of the label mass at the segment, in [0, 1].
    pub label_score: Option<f32>,
    /// Its cluster: the smallest segment id in its component of mutual near neighbours.
    pub cluster: Option<String>,
    /// Refinement round that produced this state.
    pub round: u64,
}

/// The segments-topic record of a refinement.
pub fn refinement_record(record: &RefinementRecord) -> Record {
    Record {
        key: Some(record.segment_id.clone().into_bytes()),
        payload: serde_json::to_vec(record).expect("a refinement record serialises"),
        headers: vec![
            (HEADER_SPACE.into(), record.space.as_bytes().to_vec()),
            (HEADER_RECORD.into(), b"refinement".to_vec()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use chorus_operators::cause::Cause;

    use super::*;

    #[test]
    fn dead_letter_records_carry_the_reason_and_drop_oversized_payloads() {
        let letter = DeadLetter {
            origin: Some(Origin { topic: "audio".into(), partition: 1, offset: 9 }),
            key: Some(b"s".to_vec()),
            headers: vec![("space".into(), b"x".to_vec())],
            payload: vec![1; 5_000],
            reason: "too big".into(),
            cause: Cause::Oversized,
        };
        let record = dead_letter_record(letter, 4_000);
        let header =
            |k: &str| record.headers.iter().find(|(h, _)| h == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(header(HEADER_REASON).as_deref(), Some("too big"));
        assert_eq!(header(HEADER_ORIGIN).as_deref(), Some("audio/1@9"));
        assert_eq!(header(HEADER_PAYLOAD_DROPPED).as_deref(), Some("5000 bytes"));
        assert!(record.payload.is_empty());

        // A huge key, headers and reason still make a record within the limit.
        let huge = DeadLetter {
            origin: None,
            key: Some(vec![b'k'; 600_000]),
            headers: vec![("h".into(), vec![0; 300_000])],
            payload: vec![],
            reason: "r".repeat(100_000),
            cause: Cause::BadKey,
        };
        let record = dead_letter_record(huge, 100_000);
        let size = record.key.as_ref().unwrap().len()
            + record.payload.len()
            + record.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        assert!(size < 100_000, "{size}");
    }
}
