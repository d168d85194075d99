//! Kafka: the audio-chunk message contract, the source (explicit partition assignment, manual commits behind the
//! sinks' durability frontier), the producer, and sinks that report what the broker has acknowledged.
//!
//! Progress follows Materialize's Kafka source: no consumer-group rebalancing inside a job — worker `w` of `W` reads
//! the partitions `p` with `p mod W = w` — and `enable.auto.commit=false`. Messages enter the dataflow at the wall
//! clock's millisecond (a timely time, advanced on every activation, even without messages), and the source
//! remembers, per epoch, the next offset of each partition it read. An epoch's offsets become committable once the
//! probe over every durable sink has passed it; each partition is then committed up to the oldest chunk the segmenting
//! workers still report as pending, and no further.
//!
//! One file per concern: `contract` (the headers, [`RawMessage`], [`decode`] of audio chunks and embeddings),
//! `config` ([`KafkaConfig`], validated into [`KafkaSettings`]), `admin` (topics, offset commits, the
//! [`BrokerWatch`]), `source` ([`KafkaSource`] and its operator), `producer` ([`Producer`] and its [`Acks`]), `sink`,
//! `records` (what the sinks and the API publish) and `labels` (the labels topic). This file holds the client settings they share.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::Error;

mod admin;
mod config;
mod contract;
mod labels;
mod producer;
mod records;
mod security;
mod sink;
mod source;

pub use admin::{BrokerStatus, BrokerWatch, Reported, check_connection, commit_offsets, ensure_topics};
pub use config::{ChunkLimits, KafkaConfig, KafkaSettings};
pub use contract::{
    DEFAULT_SPACE, Decoded, EmbeddingContract, HEADER_CAPTURED_AT, HEADER_CAUSE, HEADER_DIM, HEADER_HOP_SECONDS,
    HEADER_MODEL, HEADER_ORIGIN, HEADER_PAYLOAD_DROPPED, HEADER_PRIORITY, HEADER_REASON, HEADER_RECORD, HEADER_SPACE,
    HEADER_WINDOW_SECONDS, MAX_VECTORS_PER_MESSAGE, RawMessage, carries_embeddings, decode, decode_embeddings,
    decode_message, valid_space,
};
pub use labels::{LabelEvent, LabelsSource, MAX_LABEL_BYTES, check_label, given_labels};
pub use producer::{Acks, Producer, Record};
pub use records::{
    RefinementRecord, SegmentRecord, dead_letter_record, label_record, refinement_record, segment_record,
};
pub use security::{Property, Secret, Security};
pub use sink::sink;
pub use source::{KafkaSource, now_nanos, source};

impl KafkaSettings {
    /// What every consumer, producer and admin client of these settings starts from.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        self.security.apply(&mut config);
        config.set("bootstrap.servers", &self.brokers).set("log_level", "4");
        config
    }
}

/// Turns a client error into an [`Error::Kafka`] that says `what` was being done.
fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let what = what.into();
    move |source| Error::Kafka { what, source }
}
