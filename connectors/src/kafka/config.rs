//! `[kafka]`: the broker, the topics and the message limits, as configured ([`KafkaConfig`]) and validated
//! ([`KafkaSettings`]), and the [`ChunkLimits`] a chunk message must keep to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_operators::FieldError;
use serde::Deserialize;

use super::security::{Property, Secret, Security, SecurityConfig};
use crate::wav::DecodeLimits;

/// `[kafka]`: the broker, the topics and the message limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic of audio chunks (key = sensor id, value = one WAV file).
    pub audio_topic: String,
    /// Topic receiving one JSON record per new segment.
    pub segments_topic: String,
    /// Topic receiving rejected input with a `chorus.reason` header.
    pub dead_letter_topic: String,
    /// Topic of given labels (key = segment id, value = the label in UTF-8; an empty or null value takes the
    /// segment's label away). `POST /v1/labels` produces to it; the job reads it from the start at every run.
    pub labels_topic: String,
    /// Consumer group under which the job commits its offsets (it never joins the group).
    pub group_id: String,
    /// Partitions of the audio topic when chorus creates it.
    pub partitions: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Largest message accepted, in bytes (larger chunks are dead-lettered; producers split below it).
    pub max_message_bytes: usize,
    /// Producer compression: `none`, `gzip` or `lz4` (Snappy is refused: the bundled broker cannot read it back).
    pub compression: String,
    /// Milliseconds between checks for the broker's acknowledgements of what the sinks produced.
    pub flush_interval_ms: u64,
    /// Longest a fetch of audio waits at the broker for data (`fetch.wait.max.ms`). Brokers that hold a fetch for
    /// the whole wait even when data arrives (the bundled one does) add up to this much to every chunk's latency;
    /// shorter waits cost more fetch requests.
    pub fetch_wait_ms: u64,
    /// How far a chunk's `captured_at` may lie after its Kafka timestamp (audio cannot be produced before it is
    /// recorded; a sensor clock further ahead is rejected, since it would misplace the sensor's audio).
    pub max_clock_skew_seconds: u64,
    /// How long the broker keeps audio chunks, by their Kafka timestamp (the topic's `retention.ms`, with
    /// `cleanup.policy = delete`), set when chorus creates the audio topic; -1 keeps them forever. It must outlast the
    /// longest outage chorus is to survive: chorus reads from its committed offsets, and audio deleted before it was
    /// read is lost (the job says so).
    pub audio_retention_hours: f64,
    /// Bytes the broker keeps per partition of the audio topic (the topic's `retention.bytes`), set when chorus
    /// creates it; -1 for no bound. The bundled broker honours only the time bound.
    pub audio_retention_mb: i64,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// With a SASL protocol: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: String,
    /// With a SASL protocol: the user.
    pub username: String,
    /// With a SASL protocol: the password, or `env:NAME` to read it from variable NAME.
    pub password: Secret,
    /// With TLS: the CA certificate(s) (PEM) the broker's certificate must chain to; empty: the system's. A relative
    /// path is resolved against the config file's directory.
    pub ssl_ca_location: PathBuf,
    /// For mutual TLS: the client's certificate (PEM).
    pub ssl_certificate_location: PathBuf,
    /// For mutual TLS: the client's private key (PEM).
    pub ssl_key_location: PathBuf,
    /// The client key's password, if it has one; `env:NAME` reads it from variable NAME.
    pub ssl_key_password: Secret,
    /// `[kafka.properties]`: other librdkafka properties, passed as they are (`client.id`,
    /// `socket.keepalive.enable`, timeouts, ...); those chorus sets itself are refused, naming why.
    pub properties: BTreeMap<String, Property>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            audio_topic: "chorus.audio".into(),
            segments_topic: "chorus.segments".into(),
            dead_letter_topic: "chorus.dead-letter".into(),
            labels_topic: "chorus.labels".into(),
            group_id: "chorus".into(),
            partitions: 4,
            create_topics: true,
            max_message_bytes: 1_000_000,
            compression: "lz4".into(),
            flush_interval_ms: 100,
            fetch_wait_ms: 100,
            max_clock_skew_seconds: 600,
            audio_retention_hours: 168.0,
            audio_retention_mb: -1,
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            username: String::new(),
            password: Secret::default(),
            ssl_ca_location: PathBuf::new(),
            ssl_certificate_location: PathBuf::new(),
            ssl_key_location: PathBuf::new(),
            ssl_key_password: Secret::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<KafkaSettings, FieldError> {
        if self.brokers.trim().is_empty() {
            return Err(FieldError::new("brokers", "is empty"));
        }
        for (field, topic) in [
            ("audio_topic", &self.audio_topic),
            ("segments_topic", &self.segments_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("labels_topic", &self.labels_topic),
        ] {
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(FieldError::new(
                    field,
                    format!("'{topic}' is not a valid topic name ([A-Za-z0-9._-]{{1,249}})"),
                ));
            }
        }
        if self.group_id.is_empty() {
            return Err(FieldError::new("group_id", "is empty"));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(FieldError::new("partitions", format!("{} is outside 1..=10000", self.partitions)));
        }
        if self.max_clock_skew_seconds > 31_536_000 {
            return Err(FieldError::new(
                "max_clock_skew_seconds",
                format!("{} is more than a year", self.max_clock_skew_seconds),
            ));
        }
        if !(1_024..=100_000_000).contains(&self.max_message_bytes) {
            return Err(FieldError::new(
                "max_message_bytes",
                format!("{} is outside 1024..=100000000", self.max_message_bytes),
            ));
        }
        if !(1..=10_000).contains(&self.fetch_wait_ms) {
            return Err(FieldError::new("fetch_wait_ms", format!("{} is outside 1..=10000", self.fetch_wait_ms)));
        }
        let retention = self.audio_retention_hours;
        if !(retention == -1.0 || (retention > 0.0 && retention <= 87_600.0)) {
            return Err(FieldError::new(
                "audio_retention_hours",
                format!("{retention} is neither -1 (forever) nor in (0, 87600] hours"),
            ));
        }
        if self.audio_retention_mb < -1 || self.audio_retention_mb == 0 {
            return Err(FieldError::new(
                "audio_retention_mb",
                format!("{} is neither -1 (no bound) nor a positive size", self.audio_retention_mb),
            ));
        }
        match self.compression.as_str() {
            "none" | "gzip" | "lz4" => {}
            "snappy" => {
                return Err(FieldError::new(
                    "compression",
                    "snappy is refused: the bundled broker accepts it but can never read such a partition back; use lz4",
                ));
            }
            other => return Err(FieldError::new("compression", format!("'{other}' is not one of none, gzip, lz4"))),
        }
        Ok(KafkaSettings {
            brokers: self.brokers.clone(),
            audio_topic: self.audio_topic.clone(),
            segments_topic: self.segments_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            labels_topic: self.labels_topic.clone(),
            group_id: self.group_id.clone(),
            partitions: self.partitions,
            create_topics: self.create_topics,
            max_message_bytes: self.max_message_bytes,
            compression: self.compression.clone(),
            flush_interval: Duration::from_millis(self.flush_interval_ms.max(1)),
            fetch_wait: Duration::from_millis(self.fetch_wait_ms),
            max_clock_skew: Duration::from_secs(self.max_clock_skew_seconds),
            audio_retention: (retention > 0.0).then(|| Duration::from_secs_f64(retention * 3_600.0)),
            audio_retention_bytes: u64::try_from(self.audio_retention_mb).ok().map(|mb| mb << 20),
            security: SecurityConfig {
                security_protocol: self.security_protocol.clone(),
                sasl_mechanism: self.sasl_mechanism.clone(),
                username: self.username.clone(),
                password: self.password.clone(),
                ssl_ca_location: self.ssl_ca_location.clone(),
                ssl_certificate_location: self.ssl_certificate_location.clone(),
                ssl_key_location: self.ssl_key_location.clone(),
                ssl_key_password: self.ssl_key_password.clone(),
                properties: self.properties.clone(),
            }
            .build(base)?,
        })
    }
}

/// Validated Kafka settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Audio chunks.
    pub audio_topic: String,
    /// Segment records.
    pub segments_topic: String,
    /// Dead letters.
    pub dead_letter_topic: String,
    /// Given labels.
    pub labels_topic: String,
    /// Group for committed offsets.
    pub group_id: String,
    /// Partitions of a created audio topic.
    pub partitions: i32,
    /// Create missing topics.
    pub create_topics: bool,
    /// Largest accepted message.
    pub max_message_bytes: usize,
    /// Producer compression codec.
    pub compression: String,
    /// Time between acknowledgement waits.
    pub flush_interval: Duration,
    /// Longest a fetch waits at the broker.
    pub fetch_wait: Duration,
    /// Largest lead of `captured_at` over the Kafka timestamp.
    pub max_clock_skew: Duration,
    /// The audio topic's time retention (`None`: forever).
    pub audio_retention: Option<Duration>,
    /// The audio topic's bytes retention per partition (`None`: no bound).
    pub audio_retention_bytes: Option<u64>,
    /// How the clients authenticate and encrypt, and the other properties they take.
    pub security: Security,
}

impl KafkaSettings {
    /// What a chunk message may be.
    pub fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits {
            max_bytes: self.max_message_bytes,
            max_clock_skew: self.max_clock_skew,
            wav: DecodeLimits::default(),
        }
    }
}

/// What a chunk message may be.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkLimits {
    /// Largest payload.
    pub max_bytes: usize,
    /// Largest lead of `captured_at` over the Kafka timestamp.
    pub max_clock_skew: Duration,
    /// What the WAV file may hold.
    pub wav: DecodeLimits,
}
