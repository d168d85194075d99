//! The audio-chunk message contract: the headers chorus reads and writes, a message as read from the broker
//! ([`RawMessage`]), and its decoding into an [`AudioChunk`] or a dead letter that names the fault.

use chorus_operators::cause::Cause;
use chorus_operators::record::{AudioChunk, DeadLetter, Nanos, Origin, Priority, rfc3339};

use super::ChunkLimits;
use crate::wav;

/// Header naming the tenant ("space") of a chunk; absent means `default`.
pub const HEADER_SPACE: &str = "space";
/// Header with the RFC 3339 capture time of a chunk's first sample; absent means the Kafka timestamp.
pub const HEADER_CAPTURED_AT: &str = "captured_at";
/// Header with a chunk's priority: `critical`, `high`, `normal` (default) or `low`.
pub const HEADER_PRIORITY: &str = "priority";
/// Dead-letter header: why the record was rejected.
pub const HEADER_REASON: &str = "chorus.reason";
/// Dead-letter header: the short cause (`not_wav`, `truncated`, ..., see [`Cause`]).
pub const HEADER_CAUSE: &str = "chorus.cause";
/// Dead-letter header: `topic/partition@offset` of the rejected message.
pub const HEADER_ORIGIN: &str = "chorus.origin";
/// Dead-letter header: present when the original payload was too large to be carried along.
pub const HEADER_PAYLOAD_DROPPED: &str = "chorus.payload_dropped";
/// Header naming the kind of a segments-topic record that is not a new segment.
pub const HEADER_RECORD: &str = "chorus.record";

/// The space a chunk without a `space` header belongs to.
pub const DEFAULT_SPACE: &str = "default";

/// Earliest accepted `captured_at`: 1970-01-01T00:00:00Z.
const EARLIEST: Nanos = 0;
/// Latest accepted `captured_at`: 2200-01-01T00:00:00Z (time arithmetic stays far from overflow below it).
const LATEST: Nanos = 7_258_118_400_000_000_000;

/// One Kafka message, copied out of the client.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMessage {
    /// Where it was read.
    pub origin: Origin,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Option<Vec<u8>>,
    /// Headers in order (a header without a value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Kafka timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Whether the broker set the timestamp when it appended the message (the topic's `LogAppendTime`), rather than
    /// the producer.
    pub log_append_time: bool,
}

impl RawMessage {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// A dead letter carrying this message, with its `cause` and `reason`.
    pub fn reject(self, cause: Cause, reason: String) -> DeadLetter {
        DeadLetter {
            origin: Some(self.origin),
            key: self.key,
            headers: self.headers,
            payload: self.payload.unwrap_or_default(),
            reason,
            cause,
        }
    }
}

/// Decodes an audio-chunk message: key = sensor id, value = WAV, headers `space`, `captured_at`, `priority`; `now` is
/// the job's clock (nanoseconds since the epoch).
///
/// Audio cannot have been recorded after it reached the job, nor after the broker appended it: a `captured_at` more
/// than `max_clock_skew` after the job's clock, or after the broker's timestamp of a `LogAppendTime` topic, is
/// refused. A producer's own timestamp is a second opinion from the sensor's side, checked the same way.
pub fn decode_message(message: RawMessage, limits: &ChunkLimits, now: Nanos) -> Result<AudioChunk, DeadLetter> {
    let sensor = match message.key.as_deref().map(std::str::from_utf8) {
        None => return Err(message.reject(Cause::NoKey, "the message has no key; the key is the sensor id".into())),
        Some(Err(_)) => return Err(message.reject(Cause::BadKey, "the key (sensor id) is not UTF-8".into())),
        Some(Ok(s)) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            let shown: String = s.chars().take(64).collect();
            let reason = format!(
                "the sensor id {shown:?}{} ({} bytes) must be 1 to 256 bytes without control characters",
                if shown.len() < s.len() { "…" } else { "" },
                s.len()
            );
            return Err(message.reject(Cause::BadKey, reason));
        }
        Some(Ok(s)) => s.to_owned(),
    };
    let text = |name: &str| message.header(name).map(|v| std::str::from_utf8(v).map_err(|_| name.to_owned()));
    let space = match text(HEADER_SPACE) {
        None => DEFAULT_SPACE.to_owned(),
        Some(Ok(s)) if valid_space(s) => s.to_owned(),
        Some(Ok(s)) => {
            let reason = format!("space {s:?} must match [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}}");
            return Err(message.reject(Cause::BadSpace, reason));
        }
        Some(Err(_)) => return Err(message.reject(Cause::BadSpace, "the space header is not UTF-8".into())),
    };
    let produced: Option<Nanos> = message.timestamp_ms.filter(|ms| *ms > 0).and_then(|ms| ms.checked_mul(1_000_000));
    let captured_at: Nanos = match text(HEADER_CAPTURED_AT) {
        Some(Ok(s)) => match chrono::DateTime::parse_from_rfc3339(s).ok().and_then(|t| t.timestamp_nanos_opt()) {
            Some(t) if (EARLIEST..LATEST).contains(&t) => t,
            Some(_) => {
                let reason = format!("captured_at {s:?} lies outside 1970..2200");
                return Err(message.reject(Cause::BadCapturedAt, reason));
            }
            None => {
                let reason = format!("captured_at {s:?} is not an RFC 3339 time (e.g. 2026-05-01T05:00:00Z)");
                return Err(message.reject(Cause::BadCapturedAt, reason));
            }
        },
        Some(Err(_)) => return Err(message.reject(Cause::BadCapturedAt, "the captured_at header is not UTF-8".into())),
        None => match produced.filter(|t| (EARLIEST..LATEST).contains(t)) {
            Some(t) => t,
            None => {
                return Err(message.reject(Cause::NoTime, "no captured_at header and no usable Kafka timestamp".into()));
            }
        },
    };
    let skew = limits.max_clock_skew.as_nanos() as Nanos;
    let clocks = [
        Some((now, "this job's clock")),
        produced.map(|t| {
            (t, if message.log_append_time { "the broker's append time" } else { "the producer's timestamp" })
        }),
    ];
    if let Some((clock, whose)) =
        clocks.into_iter().flatten().find(|(clock, _)| captured_at > clock.saturating_add(skew))
    {
        let reason = format!(
            "captured_at {} is {:.0} s after {whose} ({}): audio cannot be recorded after it is sent, so the sensor's \
             clock is ahead (kafka.max_clock_skew_seconds = {})",
            rfc3339(captured_at),
            (captured_at - clock) as f64 / 1e9,
            rfc3339(clock),
            limits.max_clock_skew.as_secs()
        );
        return Err(message.reject(Cause::BadCapturedAt, reason));
    }
    let priority = match text(HEADER_PRIORITY) {
        None => Priority::Normal,
        Some(Ok(s)) => match s.parse() {
            Ok(p) => p,
            Err(reason) => return Err(message.reject(Cause::BadPriority, reason)),
        },
        Some(Err(_)) => return Err(message.reject(Cause::BadPriority, "the priority header is not UTF-8".into())),
    };
    let size = message.payload.as_ref().map_or(0, Vec::len);
    if size > limits.max_bytes {
        let reason = format!("the message is {size} bytes, above max_message_bytes = {}", limits.max_bytes);
        return Err(message.reject(Cause::Oversized, reason));
    }
    let audio = match wav::decode(message.payload.as_deref().unwrap_or_default(), &limits.wav) {
        Ok(audio) => audio,
        Err(rejection) => return Err(message.reject(rejection.cause, rejection.reason)),
    };
    let now_ms = now.div_euclid(1_000_000);
    let sent_ms = produced.map_or(captured_at.div_euclid(1_000_000), |t| t.div_euclid(1_000_000)).min(now_ms);
    Ok(AudioChunk {
        space,
        sensor,
        captured_at,
        sent_ms,
        priority,
        sample_rate: audio.sample_rate,
        samples: audio.samples,
        origin: message.origin,
    })
}

/// Whether `s` can name a space (it becomes a directory name in the archive).
pub fn valid_space(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wav::DecodeLimits;

    /// The job's clock in these tests: 2026-05-01T06:00:00Z, an hour after the messages' Kafka timestamp.
    const NOW: Nanos = 1_777_615_200_000_000_000;

    #[test]
    fn r13_captured_at_is_bounded_by_the_jobs_clock_and_the_brokers_append_time() {
        let wav = || wav::encode_f32(32_000, &[0.0; 10]);
        let at = |captured_at: &str, timestamp_ms: i64, log_append_time: bool, now: Nanos| {
            let mut m = message(Some("s"), &[("captured_at", captured_at)], wav());
            (m.timestamp_ms, m.log_append_time) = (Some(timestamp_ms), log_append_time);
            decode_message(m, &limits(100_000), now).map(|c| c.captured_at).map_err(|l| (l.cause, l.reason))
        };
        // A chunk from 2199 whose producer stamped it 2199 too: the two producer-set clocks agree, the job's does not.
        let (cause, reason) = at("2199-06-01T00:00:00Z", IN_2199_MS, false, NOW).unwrap_err();
        assert_eq!(cause, "bad_captured_at");
        assert!(reason.contains("after this job's clock (2026-05-01T06:00:00Z)"), "{reason}");
        // Within the skew of both clocks, it is taken.
        assert_eq!(at("2026-05-01T06:05:00Z", 1_777_615_200_000, false, NOW), Ok(1_777_615_500_000_000_000));
        // A broker that stamps appends bounds it too, even when the job's clock runs ahead.
        let (cause, reason) = at("2026-05-01T05:30:00Z", 1_777_611_600_000, true, NOW).unwrap_err();
        assert_eq!(cause, "bad_captured_at");
        assert!(reason.contains("after the broker's append time (2026-05-01T05:00:00Z)"), "{reason}");
    }

    /// 2199-06-01T00:00:00Z in milliseconds.
    const IN_2199_MS: i64 = 7_239_628_800_000;

    fn limits(max_bytes: usize) -> ChunkLimits {
        ChunkLimits { max_bytes, max_clock_skew: Duration::from_secs(600), wav: DecodeLimits::default() }
    }

    fn message(key: Option<&str>, headers: &[(&str, &str)], payload: Vec<u8>) -> RawMessage {
        RawMessage {
            origin: Origin { topic: "audio".into(), partition: 3, offset: 42 },
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(payload),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            timestamp_ms: Some(1_777_611_600_000),
            log_append_time: false,
        }
    }

    #[test]
    fn a_chunk_message_decodes_with_its_headers() {
        let wav = wav::encode_f32(32_000, &[0.5; 100]);
        let m = message(
            Some("sensor-7"),
            &[("space", "forest"), ("captured_at", "2026-05-01T05:00:00.5Z"), ("priority", "high")],
            wav,
        );
        let chunk = decode_message(m, &limits(1_000_000), NOW).unwrap();
        assert_eq!((chunk.space.as_str(), chunk.sensor.as_str()), ("forest", "sensor-7"));
        assert_eq!(chunk.captured_at, 1_777_611_600_500_000_000);
        assert_eq!(chunk.priority, Priority::High);
        assert_eq!(chunk.samples.len(), 100);
    }

    #[test]
    fn defaults_come_from_the_kafka_timestamp_and_the_default_space() {
        let chunk = decode_message(message(Some("s"), &[], wav::encode_f32(8_000, &[0.0; 8])), &limits(1_000_000), NOW)
            .unwrap();
        assert_eq!((chunk.space.as_str(), chunk.captured_at), ("default", 1_777_611_600_000_000_000));
    }

    #[test]
    fn bad_messages_become_dead_letters_naming_the_fault() {
        let wav = || wav::encode_f32(32_000, &[0.0; 10]);
        let cause = |m| decode_message(m, &limits(1_000), NOW).unwrap_err().cause;
        assert_eq!(cause(message(None, &[], wav())), "no_key");
        assert_eq!(cause(message(Some("s"), &[("space", "../etc")], wav())), "bad_space");
        assert_eq!(cause(message(Some("s"), &[("captured_at", "yesterday")], wav())), "bad_captured_at");
        assert_eq!(cause(message(Some("s"), &[("captured_at", "1700-01-01T00:00:00Z")], wav())), "bad_captured_at");
        // The Kafka timestamp says 2026-05-01T05:00Z: a chunk cannot have been recorded a day later.
        assert_eq!(cause(message(Some("s"), &[("captured_at", "2026-05-02T05:00:00Z")], wav())), "bad_captured_at");
        let mut far = message(Some("s"), &[], wav());
        far.timestamp_ms = Some(i64::MAX);
        assert_eq!(cause(far), "no_time");
        assert_eq!(cause(message(Some("s"), &[("priority", "urgent")], wav())), "bad_priority");
        assert_eq!(cause(message(Some("s"), &[], vec![0; 2_000])), "oversized");
        assert_eq!(cause(message(Some("s"), &[], b"RIFF\x08\0\0\0WAVEjunk".to_vec())), "not_wav");
        let letter =
            decode_message(message(Some("s"), &[("priority", "urgent")], wav()), &limits(1_000), NOW).unwrap_err();
        assert_eq!(letter.origin.unwrap().offset, 42);
        assert_eq!(letter.payload, wav());
    }
}
