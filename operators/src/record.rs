//! The records that flow between chorus's operators: audio chunks, windows, embedded segments and dead letters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cause::Cause;

/// Nanoseconds since the Unix epoch, UTC.
pub type Nanos = i64;

/// Where a record came from: one Kafka message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// Topic the message was read from.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// How urgently a chunk should be processed when the job is overloaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// Never shed.
    Critical,
    /// Shed only after `normal` and `low`.
    High,
    /// The default.
    #[default]
    Normal,
    /// Shed first.
    Low,
}

impl Priority {
    /// The header spelling of this priority.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "critical" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("priority '{other}' is not one of critical, high, normal, low")),
        }
    }
}

/// One decoded chunk of a sensor's audio, downmixed to mono.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioChunk {
    /// Tenant the sensor belongs to.
    pub space: String,
    /// Sensor id (the Kafka message key).
    pub sensor: String,
    /// Capture time of the first sample.
    pub captured_at: Nanos,
    /// When the chunk was sent: its Kafka timestamp in milliseconds since the epoch (never later than the job's
    /// clock when it was read). Chunks of one sensor held back for a gap wait until every partition has been read
    /// past it.
    pub sent_ms: i64,
    /// Processing priority.
    pub priority: Priority,
    /// Sample rate of `samples`, in Hz.
    pub sample_rate: u32,
    /// Mono samples, finite, nominally in [-1, 1].
    pub samples: Vec<f32>,
    /// The message the chunk came from.
    pub origin: Origin,
}

/// A window of one sensor's audio at the model's rate and length, ready to embed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Position and identity of the window.
    pub key: SegmentKey,
    /// Exactly one model window of samples; stretches with no audio are zeros.
    pub samples: Vec<f32>,
    /// Fraction of `samples` that is recorded audio rather than gap filler.
    pub coverage: f32,
    /// The message holding the window's first recorded sample.
    pub origin: Origin,
    /// The window starts before the first sample this job received from its sensor: when the job resumed from a
    /// committed offset, an earlier run may have cut it from more audio.
    pub resumed: bool,
    /// The priority of the chunk that completed the window.
    pub priority: Priority,
}

/// Where a segment sits: its space, its sensor and its first sample on the model's absolute sample clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentKey {
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// First sample, counted at `sample_rate` from the Unix epoch.
    pub start: i64,
    /// Model sample rate in Hz.
    pub sample_rate: u32,
    /// Window length in samples.
    pub len: u32,
}

impl SegmentKey {
    /// The segment's deterministic id: a replay of the same audio yields the same id.
    pub fn id(&self) -> SegmentId {
        SegmentId::of(&self.space, &self.sensor, self.start)
    }

    /// Time of the first sample.
    pub fn start_time(&self) -> Nanos {
        samples_to_nanos(self.start, self.sample_rate)
    }

    /// Time of the first sample, in microseconds since the epoch.
    pub fn start_micros(&self) -> i64 {
        self.start_time() / 1_000
    }

    /// Time just after the last sample.
    pub fn end_time(&self) -> Nanos {
        samples_to_nanos(self.start + i64::from(self.len), self.sample_rate)
    }
}

/// An embedded window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Position and identity.
    pub key: SegmentKey,
    /// Fraction of the window that is recorded audio.
    pub coverage: f32,
    /// The message holding the window's first recorded sample.
    pub origin: Origin,
    /// See [`Window::resumed`].
    pub resumed: bool,
    /// The model's output, as produced (not normalised).
    pub embedding: Vec<f32>,
    /// The window's audio as the model heard it (the model's rate, mono), as 16-bit PCM: what the archive keeps
    /// for listening and pictures.
    pub audio: Vec<i16>,
}

impl Segment {
    /// A copy without the audio, for the sinks that do not keep it.
    pub fn without_audio(&self) -> Segment {
        Segment {
            key: self.key.clone(),
            coverage: self.coverage,
            origin: self.origin.clone(),
            resumed: self.resumed,
            embedding: self.embedding.clone(),
            audio: Vec::new(),
        }
    }
}

/// A sample in [-1, 1] as 16-bit PCM (clipped beyond).
pub fn pcm16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32_767.0).round() as i16
}

/// One worker's oldest still-needed chunk per partition of the audio topic, sent whenever that changes: offsets at
/// or after these cannot be committed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    /// The reporting worker.
    pub worker: usize,
    /// `(partition, offset)` of the oldest chunk a window not yet cut still needs, per partition (chunks whose audio
    /// the sensor store holds are not needed from Kafka).
    pub pending: Vec<(i32, i64)>,
}

/// How far a source worker has read one partition of the audio topic, sent to every segmenting worker whenever it
/// changes: a sensor's chunk held back for the audio before it waits until no partition can still hold that audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// The partition.
    pub partition: i32,
    /// The latest Kafka timestamp read from it, in milliseconds (none yet: nothing read).
    pub read_ms: Option<i64>,
    /// Whether everything the broker held for it had been read (its end was reached, nothing read since).
    pub caught_up: bool,
}

/// A 64-bit segment id, shown as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// FNV-1a over `space NUL sensor NUL start(le)`: stable across platforms and releases.
    pub fn of(space: &str, sensor: &str, start: i64) -> SegmentId {
        let start = start.to_le_bytes();
        let bytes = space.as_bytes().iter().chain(&[0u8]).chain(sensor.as_bytes()).chain(&[0u8]).chain(&start);
        SegmentId(fnv1a(bytes.copied()))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SegmentId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("segment id '{s}' is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16).map(SegmentId).map_err(|_| format!("segment id '{s}' is not 16 hex digits"))
    }
}

/// A record that could not be processed, with the reason; it goes to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message it came from, when there is one.
    pub origin: Option<Origin>,
    /// Original message key.
    pub key: Option<Vec<u8>>,
    /// Original headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Original payload (empty when it was not kept).
    pub payload: Vec<u8>,
    /// Why it was rejected, for people.
    pub reason: String,
    /// Why, for machines: the `chorus.cause` header and the `cause` metric label.
    pub cause: Cause,
}

/// A hash of `key` that every process computes alike, for routing records to workers.
pub fn route(key: &str) -> u64 {
    fnv1a(key.bytes())
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// RFC 3339 in UTC with the fewest sub-second digits that are exact.
pub fn rfc3339(t: Nanos) -> String {
    chrono::DateTime::from_timestamp_nanos(t).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Converts a time to a position on the absolute sample clock of `rate` (floor).
pub fn nanos_to_samples(t: Nanos, rate: u32) -> i64 {
    (i128::from(t) * i128::from(rate)).div_euclid(1_000_000_000) as i64
}

/// The position on the absolute sample clock of `rate` nearest `t`: a time written to the nanosecond from a position
/// (cut short, as [`samples_to_nanos`] gives it at 48 kHz) lands back on that position.
pub fn nearest_sample(t: Nanos, rate: u32) -> i64 {
    (i128::from(t) * i128::from(rate) + 500_000_000).div_euclid(1_000_000_000) as i64
}

/// Converts a position on the absolute sample clock of `rate` to a time (floor).
pub fn samples_to_nanos(pos: i64, rate: u32) -> Nanos {
    (i128::from(pos) * 1_000_000_000).div_euclid(i128::from(rate)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_are_stable_and_round_trip() {
        let id = SegmentId::of("default", "sensor-7", 55_555_200_000_000);
        assert_eq!(id, SegmentId::of("default", "sensor-7", 55_555_200_000_000));
        assert_ne!(id, SegmentId::of("default", "sensor-7", 55_555_200_000_001));
        assert_ne!(SegmentId::of("ab", "c", 0), SegmentId::of("a", "bc", 0));
        assert_eq!(id.to_string().parse::<SegmentId>(), Ok(id));
        assert!("xyz".parse::<SegmentId>().is_err());
    }

    #[test]
    fn sample_clock_conversions_invert() {
        let t: Nanos = 1_777_611_600_123_456_789; // 2026-05-01T05:00:00.123456789Z
        let pos = nanos_to_samples(t, 32_000);
        assert!(samples_to_nanos(pos, 32_000) <= t);
        assert!(t - samples_to_nanos(pos, 32_000) < 31_250);
        assert_eq!(nanos_to_samples(samples_to_nanos(pos, 32_000), 32_000), pos);
        assert_eq!(nanos_to_samples(-1, 32_000), -1);
    }
}
