//! The labels topic as a source: every label given to a segment, read from the start at every run, each checked or
//! refused as a dead letter.

use std::collections::HashMap;
use std::time::Duration;

use chorus_operators::cause::Cause;
use chorus_operators::record::{DeadLetter, Origin, SegmentId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::topic_partitions;
use super::{KafkaSettings, kafka};
use crate::Error;

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// A label given to a segment, or taken away (`label: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelEvent {
    /// The labelled segment.
    pub segment: SegmentId,
    /// The label; `None` retracts the segment's label.
    pub label: Option<String>,
}

/// Checks a label as a person typed it: not empty, at most [`MAX_LABEL_BYTES`], no control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("the label is empty (to take a label away, send no value)".into());
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(format!("the label is {} bytes, more than {MAX_LABEL_BYTES}", label.len()));
    }
    if label.chars().any(char::is_control) {
        return Err("the label holds a control character".into());
    }
    Ok(())
}

/// Reads the labels topic from its start, without a consumer group: every run sees every label given, in order,
/// so the last value per segment is its label.
pub struct LabelsSource {
    consumer: BaseConsumer,
    topic: String,
}

impl LabelsSource {
    /// Assigns every partition of the labels topic from the beginning.
    pub fn open(settings: &KafkaSettings) -> Result<Self, Error> {
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", format!("{}-labels", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", settings.fetch_wait.as_millis().to_string())
            .create()
            .map_err(kafka(format!("cannot create a labels consumer for {}", settings.brokers)))?;
        let topic = settings.labels_topic.clone();
        let mut list = TopicPartitionList::new();
        for element in topic_partitions(&consumer, settings, &topic)?.elements() {
            list.add_partition_offset(&topic, element.partition(), Offset::Beginning)
                .map_err(kafka(format!("cannot assign {topic}")))?;
        }
        consumer.assign(&list).map_err(kafka(format!("cannot assign {topic}")))?;
        Ok(LabelsSource { consumer, topic })
    }

    /// Up to `max` label messages that are ready now, each parsed or rejected with the reason.
    pub fn poll(&mut self, max: usize) -> Vec<Result<LabelEvent, DeadLetter>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "Labels topic read failed; it is retried.");
                    break;
                }
            };
            let origin =
                Origin { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
            out.push(parse_label(origin, message.key(), message.payload()));
        }
        out
    }
}

/// Every segment that carries a label given by a person now: the labels topic read from its start to its end as
/// it stands (the last label of a segment holds; one taken away leaves none), within `timeout`.
pub fn given_labels(settings: &KafkaSettings, timeout: Duration) -> Result<HashMap<SegmentId, String>, Error> {
    let source = LabelsSource::open(settings)?;
    let topic = settings.labels_topic.clone();
    let mut ends = HashMap::new();
    for element in topic_partitions(&source.consumer, settings, &topic)?.elements() {
        let (_, high) = source
            .consumer
            .fetch_watermarks(&topic, element.partition(), Duration::from_secs(10))
            .map_err(kafka(format!("cannot read the end offsets of {topic}")))?;
        if high > 0 {
            ends.insert(element.partition(), high);
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut labels = HashMap::new();
    while !ends.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the labels topic {topic} was not read to its end within {timeout:?} (partitions left: {:?})",
                ends.keys().collect::<Vec<_>>()
            )));
        }
        let Some(result) = source.consumer.poll(Duration::from_millis(100)) else { continue };
        let message = result.map_err(kafka(format!("cannot read {topic}")))?;
        let origin = Origin { topic: topic.clone(), partition: message.partition(), offset: message.offset() };
        if let Ok(event) = parse_label(origin, message.key(), message.payload()) {
            match event.label {
                Some(label) => labels.insert(event.segment, label),
                None => labels.remove(&event.segment),
            };
        }
        if ends.get(&message.partition()).is_some_and(|&end| message.offset() + 1 >= end) {
            ends.remove(&message.partition());
        }
    }
    Ok(labels)
}

fn parse_label(origin: Origin, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<LabelEvent, DeadLetter> {
    let reject = |cause: Cause, reason: String| DeadLetter {
        origin: Some(origin.clone()),
        key: key.map(<[u8]>::to_vec),
        headers: Vec::new(),
        payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
        reason,
        cause,
    };
    let key = key.ok_or_else(|| reject(Cause::LabelKey, "a label message needs the segment id as its key".into()))?;
    let segment = std::str::from_utf8(key).ok().and_then(|k| k.parse::<SegmentId>().ok()).ok_or_else(|| {
        reject(Cause::LabelKey, format!("key {:?} is not a segment id (16 hex digits)", String::from_utf8_lossy(key)))
    })?;
    let label = match payload {
        None | Some([]) => None,
        Some(bytes) => {
            let label = std::str::from_utf8(bytes)
                .map_err(|_| reject(Cause::LabelValue, format!("the label of segment {segment} is not UTF-8")))?;
            check_label(label).map_err(|reason| reject(Cause::LabelValue, format!("segment {segment}: {reason}")))?;
            Some(label.to_owned())
        }
    };
    Ok(LabelEvent { segment, label })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::label_record;

    #[test]
    fn label_messages_parse_retract_or_are_refused_with_the_reason() {
        let origin = Origin { topic: "chorus.labels".into(), partition: 0, offset: 7 };
        let id = "00000000000000ff";
        let given = parse_label(origin.clone(), Some(id.as_bytes()), Some(b"owl")).unwrap();
        assert_eq!(given, LabelEvent { segment: SegmentId(255), label: Some("owl".into()) });
        assert_eq!(label_record(&given).key.as_deref(), Some(id.as_bytes()));
        assert_eq!(parse_label(origin.clone(), Some(id.as_bytes()), None).unwrap().label, None);
        assert_eq!(parse_label(origin.clone(), Some(id.as_bytes()), Some(b"")).unwrap().label, None);
        let bad = parse_label(origin.clone(), Some(b"owl"), Some(b"x")).unwrap_err();
        assert_eq!(bad.cause, "label_key");
        assert!(bad.reason.contains("16 hex digits"), "{}", bad.reason);
        assert_eq!(parse_label(origin.clone(), None, Some(b"x")).unwrap_err().cause, "label_key");
        let bad = parse_label(origin.clone(), Some(id.as_bytes()), Some(&[0xff, 0xfe])).unwrap_err();
        assert_eq!(bad.cause, "label_value");
        assert!(parse_label(origin, Some(id.as_bytes()), Some(&[b'a'; 300])).unwrap_err().reason.contains("300 bytes"));
        assert!(check_label("a\u{7}b").is_err() && check_label("  ").is_err() && check_label("Turdus merula").is_ok());
    }
}
