//! chorus operators: the record types and the dataflow-agnostic building blocks of the pipeline, with the timely
//! operators that wrap them.
//!
//! The pipeline inside a chorus job reads, per worker:
//!
//! ```text
//! audio chunks ─► Segment::segment ─► windows ─► Embed::embed ─► segments ─► Index::index ─► new segments ─► sinks
//!   (exchange by sensor: reassembly,     (ONNX Runtime,         (exchange by space: dedupe by id,
//!    resampling, grid-aligned windows)    batched)                HNSW insert, snapshots)
//! ```
//!
//! Connectors (Kafka, Parquet, WAV) live in `chorus-connectors` and never see ONNX or HNSW; jobs that wire the two
//! together live in the `chorus` crate.

pub mod cause;
pub mod durable;
pub mod embed;
pub mod index;
pub mod metrics;
pub mod record;
pub mod refine;
pub mod resample;
pub mod schedule;
pub mod segment;
pub mod throttle;
pub mod wakeup;

/// Errors raised by chorus operators.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when ONNX Runtime's shared library cannot be loaded or initialised.
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Runtime {
        /// Library path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Occurs when a model file cannot be opened or does not match its configured contract.
    #[error("model {path}: {message}")]
    Model {
        /// Model path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Occurs when running the model on a batch fails.
    #[error("embedding failed: {0}")]
    Inference(String),
    /// Occurs when audio cannot be resampled to the model's rate.
    #[error("resampling failed: {0}")]
    Resample(String),
    /// Occurs when an index snapshot cannot be written or read.
    #[error("index {path}: {message}")]
    Index {
        /// Snapshot directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Occurs when a vector has the wrong length or no direction (all zeros, NaN).
    #[error("vector rejected: {0}")]
    Vector(String),
}

/// A configuration value that failed validation: the field and why, for the caller to place in its file and section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field name within its section.
    pub field: &'static str,
    /// Why the value is rejected.
    pub message: String,
}

impl FieldError {
    /// A validation failure of `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError { field, message: message.into() }
    }
}
