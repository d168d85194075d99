//! The audio-chunk message contract: the headers chorus reads and writes, a message as read from the broker
//! ([`RawMessage`]), and its decoding into an [`AudioChunk`] or a dead letter that names the fault.

use chorus_operators::cause::Cause;
use chorus_operators::record::{
    AudioChunk, DeadLetter, Nanos, Origin, Priority, Segment, SegmentKey, nearest_sample, rfc3339, samples_to_nanos,
};

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

/// Header naming the model an embeddings message's vectors come from: its presence makes the message one of
/// embeddings (see [`decode`]).
pub const HEADER_MODEL: &str = "model";
/// Header with the dimension of an embeddings message's vectors.
pub const HEADER_DIM: &str = "dim";
/// Optional header with the window length, in seconds, each vector of an embeddings message describes.
pub const HEADER_WINDOW_SECONDS: &str = "window_seconds";
/// Optional header with the seconds between the starts of consecutive vectors of an embeddings message.
pub const HEADER_HOP_SECONDS: &str = "hop_seconds";

/// Most vectors one embeddings message may carry (far above what `kafka.max_message_bytes` lets through at any
/// useful dimension; a bound on the work one message can ask for whatever the limit).
pub const MAX_VECTORS_PER_MESSAGE: usize = 65_536;

/// What the job's model makes: an embeddings message's vectors must be of the same model, dimension and window.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingContract {
    /// The model's name (`model.name`).
    pub model: String,
    /// The embedding dimension.
    pub dim: usize,
    /// The model's sample rate in Hz: the clock segment ids are counted on.
    pub sample_rate: u32,
    /// Window length in samples at `sample_rate`.
    pub window: u32,
    /// Samples between the starts of consecutive vectors of one message when it does not say (`windows.hop_seconds`).
    pub hop: u32,
}

/// What a message of the audio topic holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A chunk of audio, to be cut into windows and embedded.
    Audio(AudioChunk),
    /// Segments embedded before they were sent, to be indexed and archived as they are.
    Embeddings(Vec<Segment>),
}

/// Decodes a message of the audio topic: an embeddings message (one with a `model` header, see
/// [`decode_embeddings`]) when `contract` is given, otherwise an audio chunk ([`decode_message`]).
pub fn decode(
    message: RawMessage,
    limits: &ChunkLimits,
    contract: Option<&EmbeddingContract>,
    now: Nanos,
) -> Result<Decoded, DeadLetter> {
    match contract {
        Some(contract) if carries_embeddings(&message) => {
            decode_embeddings(message, limits, contract, now).map(Decoded::Embeddings)
        }
        _ => decode_message(message, limits, now).map(Decoded::Audio),
    }
}

/// Whether `message` claims to carry embeddings: it has a `model` header.
pub fn carries_embeddings(message: &RawMessage) -> bool {
    message.header(HEADER_MODEL).is_some()
}

/// What every message of the audio topic says beside its payload.
struct Envelope {
    sensor: String,
    space: String,
    captured_at: Nanos,
    /// The Kafka timestamp, in nanoseconds, when there is a usable one.
    produced: Option<Nanos>,
    priority: Priority,
}

/// Reads the key and the headers every message of the audio topic shares, and bounds the payload's size.
///
/// Audio cannot have been recorded after it reached the job, nor after the broker appended it: a `captured_at` more
/// than `max_clock_skew` after the job's clock, or after the broker's timestamp of a `LogAppendTime` topic, is
/// refused. A producer's own timestamp is a second opinion from the sensor's side, checked the same way.
fn envelope(message: &RawMessage, limits: &ChunkLimits, now: Nanos) -> Result<Envelope, (Cause, String)> {
    let sensor = match message.key.as_deref().map(std::str::from_utf8) {
        None => return Err((Cause::NoKey, "the message has no key; the key is the sensor id".into())),
        Some(Err(_)) => return Err((Cause::BadKey, "the key (sensor id) is not UTF-8".into())),
        Some(Ok(s)) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            let shown: String = s.chars().take(64).collect();
            let reason = format!(
                "the sensor id {shown:?}{} ({} bytes) must be 1 to 256 bytes without control characters",
                if shown.len() < s.len() { "…" } else { "" },
                s.len()
            );
            return Err((Cause::BadKey, reason));
        }
        Some(Ok(s)) => s.to_owned(),
    };
    let text = |name: &str| message.header(name).map(|v| std::str::from_utf8(v).map_err(|_| name.to_owned()));
    let space = match text(HEADER_SPACE) {
        None => DEFAULT_SPACE.to_owned(),
        Some(Ok(s)) if valid_space(s) => s.to_owned(),
        Some(Ok(s)) => {
            return Err((Cause::BadSpace, format!("space {s:?} must match [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}}")));
        }
        Some(Err(_)) => return Err((Cause::BadSpace, "the space header is not UTF-8".into())),
    };
    let produced: Option<Nanos> = message.timestamp_ms.filter(|ms| *ms > 0).and_then(|ms| ms.checked_mul(1_000_000));
    let captured_at: Nanos = match text(HEADER_CAPTURED_AT) {
        Some(Ok(s)) => match chrono::DateTime::parse_from_rfc3339(s).ok().and_then(|t| t.timestamp_nanos_opt()) {
            Some(t) if (EARLIEST..LATEST).contains(&t) => t,
            Some(_) => return Err((Cause::BadCapturedAt, format!("captured_at {s:?} lies outside 1970..2200"))),
            None => {
                let reason = format!("captured_at {s:?} is not an RFC 3339 time (e.g. 2026-05-01T05:00:00Z)");
                return Err((Cause::BadCapturedAt, reason));
            }
        },
        Some(Err(_)) => return Err((Cause::BadCapturedAt, "the captured_at header is not UTF-8".into())),
        None => match produced.filter(|t| (EARLIEST..LATEST).contains(t)) {
            Some(t) => t,
            None => return Err((Cause::NoTime, "no captured_at header and no usable Kafka timestamp".into())),
        },
    };
    if let Some((clock, whose)) = clock_behind(captured_at, message, limits, now) {
        let reason = format!(
            "captured_at {} is {:.0} s after {whose} ({}): audio cannot be recorded after it is sent, so the sensor's \
             clock is ahead (kafka.max_clock_skew_seconds = {})",
            rfc3339(captured_at),
            (captured_at - clock) as f64 / 1e9,
            rfc3339(clock),
            limits.max_clock_skew.as_secs()
        );
        return Err((Cause::BadCapturedAt, reason));
    }
    let priority = match text(HEADER_PRIORITY) {
        None => Priority::Normal,
        Some(Ok(s)) => s.parse().map_err(|reason| (Cause::BadPriority, reason))?,
        Some(Err(_)) => return Err((Cause::BadPriority, "the priority header is not UTF-8".into())),
    };
    let size = message.payload.as_ref().map_or(0, Vec::len);
    if size > limits.max_bytes {
        let reason = format!("the message is {size} bytes, above max_message_bytes = {}", limits.max_bytes);
        return Err((Cause::Oversized, reason));
    }
    Ok(Envelope { sensor, space, captured_at, produced, priority })
}

/// The first clock `t` lies more than `max_clock_skew` after — the job's (`now`) or the message's Kafka timestamp —
/// with its name, if any does.
fn clock_behind(t: Nanos, message: &RawMessage, limits: &ChunkLimits, now: Nanos) -> Option<(Nanos, &'static str)> {
    let skew = limits.max_clock_skew.as_nanos() as Nanos;
    let produced = message.timestamp_ms.filter(|ms| *ms > 0).and_then(|ms| ms.checked_mul(1_000_000));
    let clocks = [
        Some((now, "this job's clock")),
        produced.map(|t| {
            (t, if message.log_append_time { "the broker's append time" } else { "the producer's timestamp" })
        }),
    ];
    clocks.into_iter().flatten().find(|(clock, _)| t > clock.saturating_add(skew))
}

/// Decodes an audio-chunk message: key = sensor id, value = WAV, headers `space`, `captured_at`, `priority`; `now` is
/// the job's clock (nanoseconds since the epoch). See [`envelope`] for the clocks `captured_at` is checked against.
pub fn decode_message(message: RawMessage, limits: &ChunkLimits, now: Nanos) -> Result<AudioChunk, DeadLetter> {
    let Envelope { sensor, space, captured_at, produced, priority } = match envelope(&message, limits, now) {
        Ok(envelope) => envelope,
        Err((cause, reason)) => return Err(message.reject(cause, reason)),
    };
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

/// Decodes an embeddings message: key = sensor id; value = one or more vectors of `dim` little-endian f32 each, back
/// to back; headers `model` and `dim` (required, equal to the job's), `window_seconds` (optional, equal to the
/// model's window), `hop_seconds` (optional, the seconds between consecutive vectors' starts, `windows.hop_seconds`
/// when absent), and `space`, `captured_at` (the first vector's window start), `priority` as for audio.
///
/// Vector `i` is the segment of the window starting `i` hops after the sample of the model's clock nearest
/// `captured_at`: a window on the grid audio is cut on, its start written to the nanosecond, gets the id the same
/// window cut from audio has, so a sensor can move between sending audio and sending embeddings without a segment
/// changing its id. Every value must be finite and no vector all zeros (the
/// index normalises what it is given; a zero vector has no direction).
pub fn decode_embeddings(
    message: RawMessage,
    limits: &ChunkLimits,
    contract: &EmbeddingContract,
    now: Nanos,
) -> Result<Vec<Segment>, DeadLetter> {
    let Envelope { sensor, space, captured_at, .. } = match envelope(&message, limits, now) {
        Ok(envelope) => envelope,
        Err((cause, reason)) => return Err(message.reject(cause, reason)),
    };
    let hop = match embedding_headers(&message, contract) {
        Ok(hop) => hop,
        Err((cause, reason)) => return Err(message.reject(cause, reason)),
    };
    let vectors = match vectors(message.payload.as_deref().unwrap_or_default(), contract.dim) {
        Ok(vectors) => vectors,
        Err((cause, reason)) => return Err(message.reject(cause, reason)),
    };
    let first = nearest_sample(captured_at, contract.sample_rate);
    // The last window cannot start after the clocks either (the envelope checked the first).
    let last = samples_to_nanos(first + (vectors.len() as i64 - 1) * i64::from(hop), contract.sample_rate);
    if let Some((clock, whose)) = clock_behind(last, &message, limits, now) {
        let reason = format!(
            "the last of its {} vectors starts at {}, {:.0} s after {whose} ({}): the sensor's clock is ahead or its \
             hop too long (kafka.max_clock_skew_seconds = {})",
            vectors.len(),
            rfc3339(last),
            (last - clock) as f64 / 1e9,
            rfc3339(clock),
            limits.max_clock_skew.as_secs()
        );
        return Err(message.reject(Cause::BadCapturedAt, reason));
    }
    let segments = vectors
        .into_iter()
        .enumerate()
        .map(|(i, embedding)| Segment {
            key: SegmentKey {
                space: space.clone(),
                sensor: sensor.clone(),
                start: first + i as i64 * i64::from(hop),
                sample_rate: contract.sample_rate,
                len: contract.window,
            },
            coverage: 1.0,
            origin: message.origin.clone(),
            resumed: false,
            embedding,
            audio: Vec::new(),
        })
        .collect();
    Ok(segments)
}

/// Checks an embeddings message's `model`, `dim` and `window_seconds` headers against `contract`, and returns the
/// samples between its vectors' starts.
fn embedding_headers(message: &RawMessage, contract: &EmbeddingContract) -> Result<u32, (Cause, String)> {
    let text = |name: &str| -> Result<Option<&str>, (Cause, String)> {
        message
            .header(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| (Cause::BadEmbedding, format!("the {name} header is not UTF-8")))
            })
            .transpose()
    };
    let model = text(HEADER_MODEL)?.unwrap_or_default();
    if model != contract.model {
        return Err((
            Cause::WrongModel,
            format!(
                "the vectors come from model {model:?}, this job embeds with {:?} (model.name): embeddings of \
                 different models are never mixed in a space",
                contract.model
            ),
        ));
    }
    let dim = match text(HEADER_DIM)? {
        None => {
            return Err((
                Cause::WrongModel,
                format!("no dim header; the model's vectors have {} values", contract.dim),
            ));
        }
        Some(s) => {
            s.trim().parse::<usize>().map_err(|_| (Cause::BadEmbedding, format!("dim {s:?} is not a whole number")))?
        }
    };
    if dim != contract.dim {
        return Err((Cause::WrongModel, format!("dim {dim} is not the model's dimension {}", contract.dim)));
    }
    let seconds = |name: &str| -> Result<Option<(f64, f64)>, (Cause, String)> {
        let Some(s) = text(name)? else { return Ok(None) };
        let value = s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0);
        let value =
            value.ok_or_else(|| (Cause::BadEmbedding, format!("{name} {s:?} is not a number of seconds above 0")))?;
        Ok(Some((value, value * f64::from(contract.sample_rate))))
    };
    if let Some((window, samples)) = seconds(HEADER_WINDOW_SECONDS)?
        && (samples - f64::from(contract.window)).abs() > 0.5
    {
        let model_seconds = f64::from(contract.window) / f64::from(contract.sample_rate);
        return Err((
            Cause::WrongModel,
            format!("window_seconds {window} is not the model's window of {model_seconds} s (model.window_seconds)"),
        ));
    }
    match seconds(HEADER_HOP_SECONDS)? {
        None => Ok(contract.hop),
        Some((hop, samples)) => {
            if (samples - samples.round()).abs() > 1e-6 || samples < 1.0 || samples > f64::from(contract.window) {
                return Err((
                    Cause::BadEmbedding,
                    format!(
                        "hop_seconds {hop} is not a whole number of samples at the model's {} Hz from one sample to \
                         the model's window",
                        contract.sample_rate
                    ),
                ));
            }
            Ok(samples.round() as u32)
        }
    }
}

/// The vectors of an embeddings payload: `dim` little-endian f32 each, back to back.
fn vectors(payload: &[u8], dim: usize) -> Result<Vec<Vec<f32>>, (Cause, String)> {
    let row = dim * std::mem::size_of::<f32>();
    if payload.is_empty() {
        return Err((Cause::Empty, "the payload holds no vector".into()));
    }
    if !payload.len().is_multiple_of(row) {
        return Err((
            Cause::BadEmbedding,
            format!(
                "the payload's {} bytes are not a whole number of vectors of {dim} little-endian f32 ({row} bytes each)",
                payload.len()
            ),
        ));
    }
    let count = payload.len() / row;
    if count > MAX_VECTORS_PER_MESSAGE {
        return Err((Cause::BadEmbedding, format!("{count} vectors in one message, above {MAX_VECTORS_PER_MESSAGE}")));
    }
    let mut vectors = Vec::with_capacity(count);
    for (v, bytes) in payload.chunks_exact(row).enumerate() {
        let vector: Vec<f32> =
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        if let Some(at) = vector.iter().position(|x| !x.is_finite()) {
            return Err((Cause::NonFinite, format!("value {at} of vector {v} is {}", vector[at])));
        }
        if vector.iter().all(|x| *x == 0.0) {
            return Err((Cause::BadEmbedding, format!("vector {v} is all zeros: it has no direction to search by")));
        }
        vectors.push(vector);
    }
    Ok(vectors)
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

    fn contract() -> EmbeddingContract {
        EmbeddingContract { model: "perch".into(), dim: 4, sample_rate: 32_000, window: 160_000, hop: 160_000 }
    }

    fn vectors_payload(vectors: &[[f32; 4]]) -> Vec<u8> {
        vectors.iter().flatten().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn embeddings(headers: &[(&str, &str)], payload: Vec<u8>) -> Result<Vec<Segment>, (String, String)> {
        let m = message(Some("pole-7"), headers, payload);
        match decode(m, &limits(1_000_000), Some(&contract()), NOW) {
            Ok(Decoded::Embeddings(segments)) => Ok(segments),
            Ok(Decoded::Audio(_)) => panic!("an embeddings message decoded as audio"),
            Err(letter) => Err((letter.cause.as_str().to_owned(), letter.reason)),
        }
    }

    #[test]
    fn r17_an_embeddings_message_gives_one_segment_per_vector_at_the_ids_audio_would_give() {
        let at = "2026-05-01T05:00:05Z";
        let headers = [("model", "perch"), ("dim", "4"), ("space", "forest"), ("captured_at", at)];
        let segments = embeddings(&headers, vectors_payload(&[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, -1.0]])).unwrap();
        assert_eq!(segments.len(), 2);
        // 2026-05-01T05:00:05Z on the 32 kHz clock, then one hop (5 s, `windows.hop_seconds`) later.
        let first = 1_777_611_605 * 32_000;
        let starts: Vec<i64> = segments.iter().map(|s| s.key.start).collect();
        assert_eq!(starts, [first, first + 160_000]);
        for segment in &segments {
            assert_eq!((segment.key.space.as_str(), segment.key.sensor.as_str()), ("forest", "pole-7"));
            assert_eq!((segment.key.sample_rate, segment.key.len, segment.coverage), (32_000, 160_000, 1.0));
            assert!(segment.audio.is_empty());
            assert_eq!(segment.origin.offset, 42);
        }
        // The id is the one the window cut from audio at that start has.
        assert_eq!(segments[0].key.id(), chorus_operators::record::SegmentId::of("forest", "pole-7", first));
        // The vectors are kept as sent (the index normalises them).
        assert_eq!(segments[1].embedding, [0.0, 2.0, 0.0, -1.0]);
        // A hop of its own, and a window length that agrees with the model's.
        let headers =
            [("model", "perch"), ("dim", "4"), ("captured_at", at), ("hop_seconds", "2.5"), ("window_seconds", "5")];
        let segments = embeddings(&headers, vectors_payload(&[[1.0; 4], [2.0; 4], [3.0; 4]])).unwrap();
        let starts: Vec<i64> = segments.iter().map(|s| s.key.start).collect();
        assert_eq!(starts, [first, first + 80_000, first + 160_000]);
        // A start written to the nanosecond, cut short, is on the sample it was taken from: at 48 kHz sample 7 starts
        // at 145 833.33 ns, written 145 833 ns.
        let at_48k = EmbeddingContract { sample_rate: 48_000, ..contract() };
        let start = chorus_operators::record::samples_to_nanos(7, 48_000);
        let m = message(
            Some("s"),
            &[("model", "perch"), ("dim", "4"), ("captured_at", &rfc3339(start))],
            vectors_payload(&[[1.0; 4]]),
        );
        let segments = decode_embeddings(m, &limits(1_000_000), &at_48k, NOW).unwrap();
        assert_eq!(segments[0].key.start, 7);
    }

    #[test]
    fn r17_embeddings_that_do_not_fit_the_model_become_dead_letters_naming_the_fault() {
        let one = || vectors_payload(&[[1.0, 0.0, 0.0, 0.0]]);
        let fault = |headers: &[(&str, &str)], payload: Vec<u8>| embeddings(headers, payload).unwrap_err();
        let (cause, reason) = fault(&[("model", "birdnet"), ("dim", "4")], one());
        assert_eq!(cause, "wrong_model");
        assert!(reason.contains("\"birdnet\"") && reason.contains("\"perch\""), "{reason}");
        let (cause, reason) = fault(&[("model", "perch")], one());
        assert_eq!(
            (cause.as_str(), reason.as_str()),
            ("wrong_model", "no dim header; the model's vectors have 4 values")
        );
        let (cause, reason) = fault(&[("model", "perch"), ("dim", "1024")], one());
        assert_eq!((cause.as_str(), reason.as_str()), ("wrong_model", "dim 1024 is not the model's dimension 4"));
        let (cause, reason) = fault(&[("model", "perch"), ("dim", "4"), ("window_seconds", "3")], one());
        assert_eq!(cause, "wrong_model");
        assert!(reason.contains("model's window of 5 s"), "{reason}");
        assert_eq!(fault(&[("model", "perch"), ("dim", "four")], one()).0, "bad_embedding");
        assert_eq!(fault(&[("model", "perch"), ("dim", "4"), ("hop_seconds", "0")], one()).0, "bad_embedding");
        assert_eq!(fault(&[("model", "perch"), ("dim", "4"), ("hop_seconds", "0.00001")], one()).0, "bad_embedding");
        assert_eq!(fault(&[("model", "perch"), ("dim", "4"), ("hop_seconds", "1e-12")], one()).0, "bad_embedding");
        assert_eq!(fault(&[("model", "perch"), ("dim", "4"), ("hop_seconds", "6")], one()).0, "bad_embedding");
        // Vectors reaching past the producer's clock: 5 s hops from 05:05 sent at 05:00 with 600 s of skew.
        let late = [("model", "perch"), ("dim", "4"), ("captured_at", "2026-05-01T05:05:00Z")];
        let (cause, reason) = fault(&late, vectors_payload(&vec![[1.0; 4]; 200]));
        assert_eq!(cause, "bad_captured_at");
        assert!(
            reason
                .starts_with("the last of its 200 vectors starts at 2026-05-01T05:21:35Z, 1295 s after the producer's"),
            "{reason}"
        );
        let ok = [("model", "perch"), ("dim", "4")];
        let (cause, reason) = fault(&ok, vec![0; 20]);
        assert_eq!(cause, "bad_embedding");
        assert_eq!(
            reason,
            "the payload's 20 bytes are not a whole number of vectors of 4 little-endian f32 (16 bytes each)"
        );
        let (cause, reason) = fault(&ok, vectors_payload(&[[1.0; 4], [0.0; 4]]));
        assert_eq!(
            (cause.as_str(), reason.as_str()),
            ("bad_embedding", "vector 1 is all zeros: it has no direction to search by")
        );
        let (cause, reason) = fault(&ok, vectors_payload(&[[1.0, f32::NAN, 0.0, 0.0]]));
        assert_eq!((cause.as_str(), reason.as_str()), ("non_finite", "value 1 of vector 0 is NaN"));
        assert_eq!(fault(&ok, vectors_payload(&[[1.0, 0.0, f32::INFINITY, 0.0]])).0, "non_finite");
        assert_eq!(fault(&ok, Vec::new()).0, "empty");
        // What every message of the topic must say holds for embeddings too.
        assert_eq!(fault(&[("model", "perch"), ("dim", "4"), ("space", "../x")], one()).0, "bad_space");
        let keyless = message(None, &ok, one());
        let letter = decode(keyless, &limits(1_000_000), Some(&contract()), NOW).unwrap_err();
        assert_eq!(letter.cause, "no_key");
        assert_eq!(letter.payload, one());
        // Larger than the message limit.
        let big = vectors_payload(&vec![[1.0; 4]; 100]);
        let letter = decode(message(Some("s"), &ok, big), &limits(1_000), Some(&contract()), NOW).unwrap_err();
        assert_eq!(letter.cause, "oversized");
    }

    #[test]
    fn r17_without_a_contract_every_message_is_audio() {
        let m = message(Some("s"), &[("model", "perch"), ("dim", "4")], vectors_payload(&[[1.0; 4]]));
        assert_eq!(decode(m, &limits(1_000_000), None, NOW).unwrap_err().cause, "not_wav");
        let wav = wav::encode_f32(32_000, &[0.5; 100]);
        let decoded = decode(message(Some("s"), &[], wav), &limits(1_000_000), Some(&contract()), NOW).unwrap();
        assert!(matches!(decoded, Decoded::Audio(chunk) if chunk.samples.len() == 100));
    }
}
