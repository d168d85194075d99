//! chorus connectors: the systems a job reads from and writes to — Kafka (audio chunks and embeddings in; segments
//! and dead letters out), the Parquet archive, WAV files and files of embeddings. Connectors know the records of
//! `chorus-operators` but never ONNX or HNSW.
//!
//! Sinks return a stream without data whose frontier is the sink's durability: a time is passed only once everything
//! sent at or before it is acknowledged by the broker or synced to disk. A job probes those streams and commits the
//! source offsets of an epoch only after every sink has passed it.

use std::sync::{Arc, Mutex};

pub mod kafka;
pub mod parquet;
pub mod stop;
pub mod vectors;
pub mod wav;

/// Errors raised by chorus connectors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the Kafka client fails: the broker cannot be reached, refuses a request or times out. A retry can
    /// help when the broker comes back.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Occurs when the broker did not accept a produced record within the delivery timeout; the job stops without
    /// committing, so a restart produces the record again.
    #[error("the broker did not accept a record: {0}")]
    Delivery(String),
    /// Occurs when the brokers refuse this client (its TLS, its credentials) or do not answer it.
    #[error("{0}")]
    Connection(String),
    /// Occurs when the broker did not give what was asked within the time allowed.
    #[error("{0}")]
    Timeout(String),
    /// Occurs when a topic the job needs is missing; creating it (or `kafka.create_topics`) fixes it.
    #[error("{0}")]
    Topic(String),
    /// Occurs when the archive cannot be written or read (disk full, permissions, a damaged file); a retry helps
    /// only once the cause is fixed.
    #[error("archive {path}: {message}")]
    Archive {
        /// File or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same operation later can succeed without a change of configuration or data.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Kafka { .. } | Error::Delivery(_) | Error::Timeout(_))
    }
}

/// A failure that must stop the job, raised by a sink inside the dataflow and checked by the worker loop.
#[derive(Clone, Debug, Default)]
pub struct Fatal(Arc<Mutex<Option<String>>>);

impl Fatal {
    /// Records `message` unless a failure is already recorded.
    pub fn raise(&self, message: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(%message, "The job is stopping.");
            *slot = Some(message);
        }
    }

    /// The recorded failure, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
