//! The Parquet archive, chorus's cold tier: one row per segment under `<dir>/space=<space>/date=<YYYY-MM-DD>/`.
//!
//! Columns, in order (readers project away the embedding and the audio unless they need them):
//! `segment_id` (16 hex digits), `space` (a string, as the `space=` partition key is to Hive-partitioned readers; files of earlier versions hold it dictionary-encoded, and are read alike), `sensor`, `start_time`,
//! `end_time` (µs, UTC), `coverage` (fraction of recorded audio), `sample_rate`, `model`, lineage `topic`,
//! `partition`, `offset`, `embedding_scale` (f32), `embedding` (`FixedSizeBinary(dim)`: int8 values; the
//! embedding is `int8 × embedding_scale`) and `audio` (the window as a 16-bit PCM WAV file at the model's rate, null
//! when `archive.audio` is off). Files are zstd-compressed, written under a temporary name, synced and renamed, so a
//! reader never sees half a file.
//!
//! One file per concern: `config` ([`ArchiveConfig`], validated into [`ArchiveSettings`]), `schema` (the columns and
//! the int8 encoding of embeddings), `layout` (the `space=/date=` directories and publishing a file whole), `writer`
//! ([`ArchiveWriter`]), `sink` (the timely operator around it), `scan` (reading back, pruned by the partitions' days and
//! the row groups' statistics) and `refinements` (the refinements dataset, laid out the same way).

mod compact;
mod config;
mod layout;
mod refinements;
mod scan;
mod schema;
mod sink;
mod writer;

pub use compact::{
    AUDIO_PRUNED_KEY, AudioPrune, Candidate, Compaction, Merged, audio_pruned, choose, compact_dataset, file_audio,
    prune_audio, staging_dir,
};
pub use config::{ArchiveConfig, ArchiveSettings, CompactionConfig};
pub use layout::{ArchiveFile, days, files, partition_dir, remove_temporary_files, set_aside, spaces};
pub use refinements::{LatestRefinement, RefinementRow, RefinementWriter, latest_refinements, refinement_schema};
pub use scan::{
    ArchivedSegment, ScanStats, SegmentAudio, archived_segment, read_file, read_space, scan_file, scan_files,
    segment_audio,
};
pub use schema::{dequantize, quantize, schema};
pub use sink::sink;
pub use writer::{ArchiveWriter, MAX_BUFFERED_AUDIO};
