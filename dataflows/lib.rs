//! chorus: a streaming pipeline for bioacoustics.
//!
//! Field sensors produce audio chunks to Kafka; a chorus job (a timely dataflow) turns them, continuously, into a
//! searchable archive of calls:
//!
//! ```text
//! Kafka audio topic ─► decode ─► segment (per-sensor reassembly, resampling, grid-aligned windows)
//!   ─► embed (ONNX model, batched) ─► index (HNSW per space, dedupe by segment id)
//!   ─► sinks: Parquet archive · segments topic (JSON) · dead-letter topic
//! ```
//!
//! The crate is layered: `chorus-operators` holds the record types and operators (segmenting, embedding, indexing),
//! `chorus-connectors` the systems around them (Kafka, Parquet, WAV), and this crate the jobs, their configuration
//! and the command line. Offsets are committed only behind the sinks' durability frontier and segment ids are
//! deterministic, so a restart replays without losing or doubling a segment.
//!
//! Within this crate, dependencies point one way:
//!
//! - [`config`] (every section, the servers' included) at the bottom, with [`locks`] and [`store`] (opening the
//!   indices) above it;
//! - [`job`] (the ingest dataflow and its sinks, listed in `job/sinks.rs`) and [`refine`] (the refinement dataflow);
//! - [`search`], the search engine: the one view of a segment every output shows, searches, clip embedding,
//!   archived audio and the archive listing — no HTTP, no command line;
//! - [`serve`], the HTTP server and the query API over the engine;
//! - the command files — [`query`], [`archive`], [`produce`], [`loadgen`] — which parse, call and print, with
//!   [`retention`] doing what `chorus prune` deletes.

pub mod archive;
pub mod compact;
pub mod config;
pub mod job;
pub mod loadgen;
pub mod locks;
pub mod produce;
pub mod query;
pub mod refine;
pub mod retention;
pub mod search;
pub mod serve;
pub mod spectrogram;
pub mod store;

use std::path::PathBuf;

/// Errors of chorus jobs and commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when a config file cannot be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Occurs when the model, ONNX Runtime, resampling or the index fails.
    #[error(transparent)]
    Operator(#[from] chorus_operators::Error),
    /// Occurs when Kafka or the archive fails.
    #[error(transparent)]
    Connector(#[from] chorus_connectors::Error),
    /// Occurs when an input file (audio to produce or to query with) cannot be used.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Occurs when command-line arguments contradict each other or the config.
    #[error("{0}")]
    Usage(String),
    /// Occurs when a query names a segment or space that is not there.
    #[error("{0}")]
    NotFound(String),
    /// Occurs when a job stops because of a failure inside the dataflow.
    #[error("the job failed: {0}")]
    Job(String),
}
