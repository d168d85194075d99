//! The Parquet archive, chorus's cold tier: one row per segment under `<dir>/space=<space>/date=<YYYY-MM-DD>/`.
//!
//! Columns, in order (readers project away the embedding and the audio unless they need them):
//! `segment_id` (16 hex digits), `space` (dictionary-encoded, matching the hive partition), `sensor`, `start_time`,
//! `end_time` (µs, UTC), `coverage` (fraction of recorded audio), `sample_rate`, `model`, lineage `topic`,
//! `partition`, `offset`, `embedding_scale` (f32), `embedding` (`FixedSizeBinary(dim)`: int8 values; the
//! embedding is `int8 × embedding_scale`) and `audio` (the window as a 16-bit PCM WAV file at the model's rate, null
//! when `archive.audio` is off). Files are zstd-compressed, written under a temporary name, synced and renamed, so a
//! reader never sees half a file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::builder::{FixedSizeBinaryBuilder, StringDictionaryBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chorus_operators::FieldError;
use chorus_operators::index::Filter;
use chorus_operators::metrics::Metrics;
use chorus_operators::record::{Nanos, Origin, Segment, SegmentId};
use chorus_operators::wakeup::Wakeup;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::{Error, Fatal};

/// `[archive]`: where and how segments are written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Root directory; a relative path is resolved against the config file's directory.
    pub dir: PathBuf,
    /// A file is written once this many rows wait for one space and date.
    pub max_rows_per_file: usize,
    /// Seconds a row may wait before its file is written (offsets are committed only after that).
    pub flush_interval_seconds: f64,
    /// zstd level, 1..=22.
    pub zstd_level: i32,
    /// Keep each segment's audio (16-bit PCM WAV at the model's rate) in the `audio` column, for listening and
    /// spectrograms: about 64 KB per second of windows at 32 kHz before compression.
    pub audio: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("var/archive"),
            max_rows_per_file: 100_000,
            flush_interval_seconds: 10.0,
            zstd_level: 3,
            audio: true,
        }
    }
}

impl ArchiveConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<ArchiveSettings, FieldError> {
        if self.dir.as_os_str().is_empty() {
            return Err(FieldError::new("dir", "is empty"));
        }
        if self.max_rows_per_file == 0 {
            return Err(FieldError::new("max_rows_per_file", "must be at least 1"));
        }
        if !(self.flush_interval_seconds > 0.0 && self.flush_interval_seconds <= 86_400.0) {
            return Err(FieldError::new(
                "flush_interval_seconds",
                format!("{} is outside (0, 86400]", self.flush_interval_seconds),
            ));
        }
        if ZstdLevel::try_new(self.zstd_level).is_err() || self.zstd_level < 1 {
            return Err(FieldError::new("zstd_level", format!("{} is outside 1..=22", self.zstd_level)));
        }
        Ok(ArchiveSettings {
            dir: base.join(&self.dir),
            max_rows_per_file: self.max_rows_per_file,
            flush_interval: Duration::from_secs_f64(self.flush_interval_seconds),
            zstd_level: self.zstd_level,
            audio: self.audio,
        })
    }
}

/// Validated archive settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveSettings {
    /// Root directory.
    pub dir: PathBuf,
    /// Rows per file at most.
    pub max_rows_per_file: usize,
    /// Longest wait before a row is written.
    pub flush_interval: Duration,
    /// zstd level.
    pub zstd_level: i32,
    /// Whether segments' audio is kept.
    pub audio: bool,
}

/// Audio bytes a writer holds at most before it writes its files, whatever the flush interval: 64 MiB (about 200
/// windows of 5 s at 32 kHz); [`ArchiveWriter::limit_audio`] lowers it.
pub const MAX_BUFFERED_AUDIO: usize = 64 << 20;
/// The least audio a writer holds before the byte bound writes its files: 2 MiB, a few windows per file.
const MIN_BUFFERED_AUDIO: usize = 2 << 20;

/// The archive's Arrow schema for embeddings of `dim` dimensions.
pub fn schema(dim: usize) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("space", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("start_time", utc(), false),
        Field::new("end_time", utc(), false),
        Field::new("coverage", DataType::Float32, false),
        Field::new("sample_rate", DataType::Int32, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("embedding_scale", DataType::Float32, false),
        Field::new("embedding", DataType::FixedSizeBinary(dim as i32), false),
        Field::new("audio", DataType::Binary, true),
    ]))
}

/// Symmetric int8 quantisation with one scale per vector: `x ≈ q × scale`.
pub fn quantize(v: &[f32]) -> (f32, Vec<u8>) {
    let peak = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
    let q = v.iter().map(|x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8).collect();
    (scale, q)
}

/// Inverse of [`quantize`].
pub fn dequantize(scale: f32, q: &[u8]) -> Vec<f32> {
    q.iter().map(|&b| f32::from(b as i8) * scale).collect()
}

fn date_of(t: Nanos) -> String {
    chrono::DateTime::from_timestamp_nanos(t).format("%Y-%m-%d").to_string()
}

/// Directory of one space's partition for one day.
pub fn partition_dir(root: &Path, space: &str, date: &str) -> PathBuf {
    root.join(format!("space={space}")).join(format!("date={date}"))
}

/// Buffers segments and writes them as Parquet files, one per space and day.
pub struct ArchiveWriter {
    settings: ArchiveSettings,
    model: String,
    dim: usize,
    schema: SchemaRef,
    writer_id: String,
    sequence: AtomicU64,
    buffers: BTreeMap<(String, String), Vec<Segment>>,
    oldest: Option<Instant>,
    audio_bytes: usize,
    max_audio_bytes: usize,
}

impl ArchiveWriter {
    /// A writer for segments of `model` with `dim`-dimensional embeddings; `writer_id` keeps file names of
    /// concurrent writers apart.
    pub fn new(settings: ArchiveSettings, model: &str, dim: usize, writer_id: &str) -> Self {
        ArchiveWriter {
            settings,
            model: model.to_owned(),
            dim,
            schema: schema(dim),
            writer_id: writer_id.to_owned(),
            sequence: AtomicU64::new(0),
            buffers: BTreeMap::new(),
            oldest: None,
            audio_bytes: 0,
            max_audio_bytes: MAX_BUFFERED_AUDIO,
        }
    }

    /// Writes the files once the audio waiting reaches `bytes` (at most [`MAX_BUFFERED_AUDIO`]): the job's memory
    /// budget sets it.
    pub fn limit_audio(&mut self, bytes: usize) {
        self.max_audio_bytes = bytes.clamp(MIN_BUFFERED_AUDIO, MAX_BUFFERED_AUDIO);
    }

    /// Adds a segment to its partition's buffer.
    pub fn add(&mut self, mut segment: Segment) {
        if self.settings.audio {
            self.audio_bytes += 2 * segment.audio.len();
        } else {
            segment.audio = Vec::new();
        }
        let key = (segment.key.space.clone(), date_of(segment.key.start_time()));
        self.buffers.entry(key).or_default().push(segment);
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Rows waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buffers.values().map(Vec::len).sum()
    }

    /// Whether a buffer is full or the oldest row has waited long enough.
    pub fn due(&self) -> bool {
        self.buffers.values().any(|b| b.len() >= self.settings.max_rows_per_file)
            || (self.audio_bytes > 0 && self.audio_bytes >= self.max_audio_bytes)
            || self.oldest.is_some_and(|t| t.elapsed() >= self.settings.flush_interval)
    }

    /// Writes every buffer to its own file; returns the files written.
    pub fn flush(&mut self) -> Result<Vec<PathBuf>, Error> {
        let mut written = Vec::new();
        for ((space, date), mut segments) in std::mem::take(&mut self.buffers) {
            // Sorted by sensor and time, a file's row groups have narrow `sensor` and `start_time` statistics, which
            // scans filtering on either use to skip them.
            segments.sort_unstable_by(|a, b| (&a.key.sensor, a.key.start).cmp(&(&b.key.sensor, b.key.start)));
            for part in segments.chunks(self.settings.max_rows_per_file) {
                written.push(self.write_file(&space, &date, part)?);
            }
        }
        self.oldest = None;
        self.audio_bytes = 0;
        Ok(written)
    }

    fn write_file(&self, space: &str, date: &str, segments: &[Segment]) -> Result<PathBuf, Error> {
        let dir = partition_dir(&self.settings.dir, space, date);
        let batch = self.batch(segments).map_err(|e| Error::Archive {
            path: dir.display().to_string(),
            message: format!("cannot build the record batch: {e}"),
        })?;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        publish(
            &dir,
            &format!("{}-{sequence:06}", self.writer_id),
            &batch,
            self.settings.zstd_level,
            &["embedding", "audio"],
        )
    }

    fn batch(&self, segments: &[Segment]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let micros = |t: Nanos| t.div_euclid(1_000);
        let mut space = StringDictionaryBuilder::<Int32Type>::new();
        let mut embedding = FixedSizeBinaryBuilder::with_capacity(segments.len(), self.dim as i32);
        let mut scales = Vec::with_capacity(segments.len());
        for segment in segments {
            space.append_value(&segment.key.space);
            let (scale, q) = quantize(&segment.embedding);
            scales.push(scale);
            embedding.append_value(&q)?;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(segments.iter().map(|s| s.key.id().to_string()))),
            Arc::new(space.finish()),
            Arc::new(StringArray::from_iter_values(segments.iter().map(|s| s.key.sensor.as_str()))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(segments.iter().map(|s| micros(s.key.start_time())))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(segments.iter().map(|s| micros(s.key.end_time())))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float32Array::from_iter_values(segments.iter().map(|s| s.coverage))),
            Arc::new(Int32Array::from_iter_values(segments.iter().map(|s| s.key.sample_rate as i32))),
            Arc::new(StringArray::from_iter_values(segments.iter().map(|_| self.model.as_str()))),
            Arc::new(StringArray::from_iter_values(segments.iter().map(|s| s.origin.topic.as_str()))),
            Arc::new(Int32Array::from_iter_values(segments.iter().map(|s| s.origin.partition))),
            Arc::new(Int64Array::from_iter_values(segments.iter().map(|s| s.origin.offset))),
            Arc::new(Float32Array::from(scales)),
            Arc::new(embedding.finish()),
            Arc::new(BinaryArray::from_iter(
                segments
                    .iter()
                    .map(|s| (!s.audio.is_empty()).then(|| crate::wav::encode_pcm16(s.key.sample_rate, &s.audio))),
            )),
        ];
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// Rows per row group. A file is sorted by sensor and time, so in a large file (a backlog drained, a long flush
/// interval) each row group holds a run of few sensors and a narrow `sensor` statistic; a small file is one group.
const ROW_GROUP_ROWS: usize = 8_192;

/// Writes `batch` as `part-<millis>-<name>.parquet` in `dir`: under a temporary name, synced, then renamed, so a
/// reader never sees half a file. `blobs` names the columns left without dictionary and statistics (vectors, audio).
fn publish(dir: &Path, name: &str, batch: &RecordBatch, zstd_level: i32, blobs: &[&str]) -> Result<PathBuf, Error> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Error::Archive {
        path: dir.display().to_string(),
        message: format!("{what}: {e}"),
    };
    fs::create_dir_all(dir).map_err(|e| failed("cannot create the directory", &e))?;
    let millis = chrono::Utc::now().timestamp_millis();
    let name = format!("part-{millis}-{name}.parquet");
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level).expect("validated")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("chorus {}", env!("CARGO_PKG_VERSION")));
    for blob in blobs {
        properties = properties
            .set_column_dictionary_enabled(ColumnPath::from(*blob), false)
            .set_column_statistics_enabled(ColumnPath::from(*blob), EnabledStatistics::None);
    }
    let properties = properties.build();
    let written = (|| {
        let mut file = fs::File::create(&tmp).map_err(|e| failed("cannot create a file", &e))?;
        let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(properties))
            .map_err(|e| failed("cannot start a Parquet file", &e))?;
        writer.write(batch).map_err(|e| failed("cannot write rows", &e))?;
        writer.close().map_err(|e| failed("cannot finish a Parquet file", &e))?;
        file.sync_all().map_err(|e| failed("cannot sync a file", &e))?;
        fs::rename(&tmp, &path).map_err(|e| failed("cannot publish a file", &e))
    })();
    if written.is_err() {
        // A failed write (a full disk) leaves nothing behind.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| failed("cannot sync the directory", &e))?;
    Ok(path)
}

/// Whether `name` is a temporary file a writer publishes from (see [`publish`]).
fn is_temporary(name: &str) -> bool {
    name.starts_with(".part-") && name.ends_with(".tmp")
}

/// Removes the temporary files that writers killed mid-write left in the day partitions under `root` (an archive or
/// a refinements dataset), when older than `min_age` (`None`: whatever their age); returns how many. Only the job
/// holding the archive's lock may call it: no other process writes there.
pub fn remove_temporary_files(root: &Path, min_age: Option<Duration>) -> usize {
    let entries = |dir: &Path| fs::read_dir(dir).into_iter().flatten().flatten();
    let mut removed = 0;
    for space in entries(root).filter(|e| e.file_name().to_string_lossy().starts_with("space=")) {
        for day in entries(&space.path()).filter(|e| e.file_name().to_string_lossy().starts_with("date=")) {
            for file in entries(&day.path()).filter(|e| is_temporary(&e.file_name().to_string_lossy())) {
                let age = file.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if min_age.is_none_or(|min| age.is_some_and(|age| age >= min)) && fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Sets a damaged archive file aside: renames `part-….parquet` to `.part-….parquet.damaged` in its directory, where
/// no reader looks (chorus, DuckDB, pyarrow and polars all skip hidden and non-`.parquet` files), and returns the
/// new path. The rows it held are still in Kafka (their offsets were only committed once the file was written) or
/// are lost either way.
pub fn set_aside(path: &Path) -> Result<PathBuf, Error> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = path.with_file_name(format!(".{name}.damaged"));
    fs::rename(path, &aside).map_err(|e| Error::Archive {
        path: path.display().to_string(),
        message: format!("cannot set it aside: {e}"),
    })?;
    Ok(aside)
}

/// What the refinement says about one segment at one round: a row of the refinements dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct RefinementRow {
    /// The segment.
    pub id: SegmentId,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// First sample, µs since the epoch (UTC).
    pub start_micros: i64,
    /// Label and its share of the label mass, if a label reached the segment.
    pub label: Option<(String, f32)>,
    /// Cluster (smallest segment id of its component).
    pub cluster: Option<SegmentId>,
    /// Refined embedding (unit length).
    pub refined: Option<Vec<f32>>,
    /// Refinement round.
    pub round: u64,
}

/// The refinements dataset's Arrow schema for embeddings of `dim` dimensions: `segment_id`, `space`, `sensor`,
/// `start_time`, `label`, `label_score`, `cluster`, `round`, `updated_at`, `refined_scale`, `refined` (int8 ×
/// scale, as in the archive). Rows are changes: the latest `updated_at` (then `round`) per segment holds.
pub fn refinement_schema(dim: usize) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("space", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("start_time", utc(), false),
        Field::new("label", DataType::Utf8, true),
        Field::new("label_score", DataType::Float32, true),
        Field::new("cluster", DataType::Utf8, true),
        Field::new("round", DataType::Int64, false),
        Field::new("updated_at", utc(), false),
        Field::new("refined_scale", DataType::Float32, true),
        Field::new("refined", DataType::FixedSizeBinary(dim as i32), true),
    ]))
}

/// Writes refinement rows under `<dir>/space=<space>/date=<date of the segment>/`, one file per space and day per
/// flush.
pub struct RefinementWriter {
    dir: PathBuf,
    dim: usize,
    zstd_level: i32,
    writer_id: String,
    sequence: AtomicU64,
    buffers: BTreeMap<(String, String), Vec<RefinementRow>>,
}

impl RefinementWriter {
    /// A writer into `dir` for `dim`-dimensional refined embeddings.
    pub fn new(dir: &Path, dim: usize, zstd_level: i32, writer_id: &str) -> Self {
        RefinementWriter {
            dir: dir.to_path_buf(),
            dim,
            zstd_level,
            writer_id: writer_id.to_owned(),
            sequence: AtomicU64::new(0),
            buffers: BTreeMap::new(),
        }
    }

    /// Buffers a row.
    pub fn add(&mut self, row: RefinementRow) {
        let key = (row.space.clone(), date_of(row.start_micros * 1_000));
        self.buffers.entry(key).or_default().push(row);
    }

    /// Rows waiting.
    pub fn buffered(&self) -> usize {
        self.buffers.values().map(Vec::len).sum()
    }

    /// Writes every buffer; returns the files written.
    pub fn flush(&mut self) -> Result<Vec<PathBuf>, Error> {
        let mut written = Vec::new();
        let updated_at = chrono::Utc::now().timestamp_micros();
        for ((space, date), rows) in std::mem::take(&mut self.buffers) {
            let dir = partition_dir(&self.dir, &space, &date);
            for part in rows.chunks(65_536) {
                let batch = self.batch(part, updated_at).map_err(|e| Error::Archive {
                    path: dir.display().to_string(),
                    message: format!("cannot build the record batch: {e}"),
                })?;
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                written.push(publish(
                    &dir,
                    &format!("{}-{sequence:06}", self.writer_id),
                    &batch,
                    self.zstd_level,
                    &["refined"],
                )?);
            }
        }
        Ok(written)
    }

    fn batch(&self, rows: &[RefinementRow], updated_at: i64) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut space = StringDictionaryBuilder::<Int32Type>::new();
        let mut refined = FixedSizeBinaryBuilder::with_capacity(rows.len(), self.dim as i32);
        let mut scales = Vec::with_capacity(rows.len());
        for row in rows {
            space.append_value(&row.space);
            match &row.refined {
                Some(v) if v.len() == self.dim => {
                    let (scale, q) = quantize(v);
                    scales.push(Some(scale));
                    refined.append_value(&q)?;
                }
                _ => {
                    scales.push(None);
                    refined.append_null();
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id.to_string()))),
            Arc::new(space.finish()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.sensor.as_str()))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.start_micros)).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.label.as_ref().map(|(l, _)| l.as_str())))),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.label.as_ref().map(|(_, s)| *s)))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.cluster.map(|c| c.to_string())))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.round as i64))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| updated_at)).with_timezone("UTC")),
            Arc::new(Float32Array::from(scales)),
            Arc::new(refined.finish()),
        ];
        RecordBatch::try_new(refinement_schema(self.dim), columns)
    }
}

/// One archived segment as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedSegment {
    /// Segment id.
    pub id: SegmentId,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// First sample, µs since the epoch (UTC).
    pub start_micros: i64,
    /// Just past the last sample, µs since the epoch (UTC).
    pub end_micros: i64,
    /// Fraction of recorded audio.
    pub coverage: f32,
    /// Model that embedded it.
    pub model: String,
    /// Where its first recorded sample was read.
    pub origin: Origin,
    /// The dequantised embedding, when it was asked for.
    pub embedding: Option<Vec<f32>>,
}

/// The spaces present in an archive.
pub fn spaces(root: &Path) -> Result<Vec<String>, Error> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::Archive { path: root.display().to_string(), message: e.to_string() }),
    };
    for entry in entries.flatten() {
        if let Some(space) = entry.file_name().to_str().and_then(|n| n.strip_prefix("space=")) {
            found.push(space.to_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// The Parquet files of one space, oldest day first.
pub fn files(root: &Path, space: &str) -> Result<Vec<PathBuf>, Error> {
    Ok(days(root, space)?.into_iter().flat_map(|(_, files)| files).collect())
}

/// The day partitions of one space, oldest first: each day (`YYYY-MM-DD`, the UTC day segments start on) with its
/// Parquet files in name order.
pub fn days(root: &Path, space: &str) -> Result<Vec<(String, Vec<PathBuf>)>, Error> {
    let space_dir = root.join(format!("space={space}"));
    let mut out = Vec::new();
    let entries = match fs::read_dir(&space_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::Archive { path: space_dir.display().to_string(), message: e.to_string() }),
    };
    for day in entries.flatten() {
        let Some(date) = day.file_name().to_str().and_then(|n| n.strip_prefix("date=")).map(str::to_owned) else {
            continue;
        };
        let mut files: Vec<PathBuf> = fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| {
                let name = f.file_name();
                let name = name.to_string_lossy();
                name.starts_with("part-") && name.ends_with(".parquet")
            })
            .map(|f| f.path())
            .collect();
        files.sort();
        out.push((date, files));
    }
    out.sort();
    Ok(out)
}

/// Reads every segment of `space`, with embeddings when `embeddings` is set (otherwise that column is never read).
pub fn read_space(
    root: &Path,
    space: &str,
    embeddings: bool,
    mut each: impl FnMut(ArchivedSegment),
) -> Result<(), Error> {
    for path in files(root, space)? {
        read_file(&path, embeddings, &mut each)?;
    }
    Ok(())
}

/// Every column but the embedding and its scale: what a scan that skips the vectors reads.
const METADATA_COLUMNS: [&str; 10] =
    ["segment_id", "space", "sensor", "start_time", "end_time", "coverage", "model", "topic", "partition", "offset"];

/// Reads one archive file.
pub fn read_file(path: &Path, embeddings: bool, each: &mut impl FnMut(ArchivedSegment)) -> Result<(), Error> {
    scan_file(path, &Filter::default(), embeddings, &mut ScanStats::default(), each)
}

/// What a filtered scan of the archive read, and what the partitions' days and the row groups' statistics let it
/// skip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Day partitions of the spaces scanned.
    pub partitions: usize,
    /// Day partitions skipped: their day lies outside the filter's time range.
    pub partitions_skipped: usize,
    /// Files of the days read (a file whose row groups all fail the filter is not opened again).
    pub files: usize,
    /// Row groups in the files opened.
    pub row_groups: usize,
    /// Row groups skipped: their `sensor` or `start_time` statistics rule the filter out.
    pub row_groups_skipped: usize,
    /// Rows decoded.
    pub rows_read: usize,
    /// Rows that passed the filter.
    pub rows_matched: usize,
}

impl ScanStats {
    /// Adds another scan's counts.
    pub fn add(&mut self, other: &ScanStats) {
        self.partitions += other.partitions;
        self.partitions_skipped += other.partitions_skipped;
        self.files += other.files;
        self.row_groups += other.row_groups;
        self.row_groups_skipped += other.row_groups_skipped;
        self.rows_read += other.rows_read;
        self.rows_matched += other.rows_matched;
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The files of `space` a scan with `filter` must open: those of the days its time range touches.
pub fn scan_files(root: &Path, space: &str, filter: &Filter, stats: &mut ScanStats) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for (date, files) in days(root, space)? {
        stats.partitions += 1;
        let start = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros());
        if let Some(start) = start
            && !filter.overlaps((start, start + DAY_MICROS - 1))
        {
            stats.partitions_skipped += 1;
            continue;
        }
        out.extend(files);
    }
    Ok(out)
}

/// Opens a Parquet file of the archive for reading.
fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<fs::File>, Error> {
    let failed =
        |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
    let file = fs::File::open(path).map_err(|e| failed(&e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| failed(&e))
}

/// What a row group's statistics say about its sensors and start times (`None`: not recorded).
#[derive(Clone, Debug)]
struct Bounds {
    sensors: Option<(Vec<u8>, Vec<u8>)>,
    starts: Option<(i64, i64)>,
}

impl Bounds {
    fn of(group: &RowGroupMetaData) -> Bounds {
        let mut bounds = Bounds { sensors: None, starts: None };
        for column in group.columns() {
            let Some(statistics) = column.statistics() else { continue };
            match column.column_path().string().as_str() {
                "sensor" => {
                    if let (Some(min), Some(max)) = (statistics.min_bytes_opt(), statistics.max_bytes_opt()) {
                        bounds.sensors = Some((min.to_vec(), max.to_vec()));
                    }
                }
                "start_time" => {
                    if let Statistics::Int64(values) = statistics
                        && let (Some(&min), Some(&max)) = (values.min_opt(), values.max_opt())
                    {
                        bounds.starts = Some((min, max));
                    }
                }
                _ => {}
            }
        }
        bounds
    }

    /// Whether the group may hold a row that passes `filter` (true where the statistics are missing).
    fn admit(&self, filter: &Filter) -> bool {
        let sensor = match (&self.sensors, filter.sensors.is_empty()) {
            (Some((min, max)), false) => {
                filter.sensors.iter().any(|s| min.as_slice() <= s.as_bytes() && s.as_bytes() <= max.as_slice())
            }
            _ => true,
        };
        sensor && self.starts.is_none_or(|range| filter.overlaps(range))
    }
}

/// The row groups' bounds of an archive file, read from its footer once: a published file never changes.
fn file_bounds(path: &Path) -> Result<Arc<[Bounds]>, Error> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<[Bounds]>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(bounds) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Ok(bounds.clone());
    }
    let builder = open_reader(path)?;
    let bounds: Arc<[Bounds]> = builder.metadata().row_groups().iter().map(Bounds::of).collect();
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    // Pruned files leave entries behind; a bound on the entries keeps that from growing without end.
    if cache.len() >= 1_000_000 {
        cache.clear();
    }
    cache.insert(path.to_path_buf(), bounds.clone());
    Ok(bounds)
}

/// The row groups of `path` whose statistics admit `filter` (all of them when the filter is empty).
fn admitted_groups(path: &Path, filter: &Filter, stats: &mut ScanStats) -> Result<Vec<usize>, Error> {
    let bounds = file_bounds(path)?;
    stats.files += 1;
    stats.row_groups += bounds.len();
    let kept: Vec<usize> = (0..bounds.len()).filter(|&i| filter.is_empty() || bounds[i].admit(filter)).collect();
    stats.row_groups_skipped += bounds.len() - kept.len();
    Ok(kept)
}

/// Reads the rows of one archive file that pass `filter`, decoding only the row groups whose statistics admit it.
pub fn scan_file(
    path: &Path,
    filter: &Filter,
    embeddings: bool,
    stats: &mut ScanStats,
    each: &mut impl FnMut(ArchivedSegment),
) -> Result<(), Error> {
    let failed =
        |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
    let kept = admitted_groups(path, filter, stats)?;
    if kept.is_empty() {
        return Ok(());
    }
    let builder = open_reader(path)?;
    let mut wanted = METADATA_COLUMNS.to_vec();
    if embeddings {
        wanted.extend(["embedding_scale", "embedding"]);
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
    let reader =
        builder.with_projection(mask).with_row_groups(kept).with_batch_size(8_192).build().map_err(|e| failed(&e))?;
    for batch in reader {
        let batch = batch.map_err(|e| failed(&e))?;
        let column =
            |name: &str| batch.column_by_name(name).ok_or_else(|| failed(&format!("column {name} is missing")));
        let ids = column("segment_id")?.as_string::<i32>();
        let space = column("space")?.as_dictionary::<Int32Type>();
        let space_values = space.values().as_string::<i32>();
        let sensors = column("sensor")?.as_string::<i32>();
        let starts = column("start_time")?.as_primitive::<TimestampMicrosecondType>();
        let ends = column("end_time")?.as_primitive::<TimestampMicrosecondType>();
        let coverage = column("coverage")?.as_primitive::<Float32Type>();
        let models = column("model")?.as_string::<i32>();
        let topics = column("topic")?.as_string::<i32>();
        let partitions = column("partition")?.as_primitive::<Int32Type>();
        let offsets = column("offset")?.as_primitive::<Int64Type>();
        let vectors = if embeddings {
            Some((
                column("embedding_scale")?.as_primitive::<Float32Type>(),
                column("embedding")?.as_fixed_size_binary(),
            ))
        } else {
            None
        };
        stats.rows_read += batch.num_rows();
        for i in 0..batch.num_rows() {
            if !filter.admits(sensors.value(i), starts.value(i)) {
                continue;
            }
            stats.rows_matched += 1;
            let id = ids.value(i).parse().map_err(|e: String| failed(&e))?;
            each(ArchivedSegment {
                id,
                space: space_values.value(space.keys().value(i) as usize).to_owned(),
                sensor: sensors.value(i).to_owned(),
                start_micros: starts.value(i),
                end_micros: ends.value(i),
                coverage: coverage.value(i),
                model: models.value(i).to_owned(),
                origin: Origin {
                    topic: topics.value(i).to_owned(),
                    partition: partitions.value(i),
                    offset: offsets.value(i),
                },
                embedding: vectors.map(|(scales, q)| dequantize(scales.value(i), q.value(i))),
            });
        }
    }
    Ok(())
}

/// The archived row of segment `id` of `space`, recorded by `sensor` from `start_micros` (which narrow the search to
/// the row groups that can hold it), without its embedding; `None` when it is not archived.
pub fn archived_segment(
    root: &Path,
    space: &str,
    id: SegmentId,
    sensor: &str,
    start_micros: i64,
) -> Result<Option<ArchivedSegment>, Error> {
    let filter =
        Filter { sensors: vec![sensor.to_owned()], from_micros: Some(start_micros), to_micros: Some(start_micros + 1) };
    let mut stats = ScanStats::default();
    let mut found = None;
    for path in scan_files(root, space, &filter, &mut stats)? {
        scan_file(&path, &filter, false, &mut stats, &mut |row| {
            if row.id == id {
                found = Some(row);
            }
        })?;
        if found.is_some() {
            break;
        }
    }
    Ok(found)
}

/// The audio archived with segment `id` of `space`, as a WAV file: `None` when the segment is not archived,
/// `Some(None)` when it was archived without audio. `filter` narrows the search: with the segment's sensor and start
/// time it is one row group. Only the `segment_id` column is read to find the row, then only that row's audio.
pub fn segment_audio(
    root: &Path,
    space: &str,
    id: SegmentId,
    filter: &Filter,
) -> Result<Option<Option<Vec<u8>>>, Error> {
    let wanted = id.to_string();
    let mut stats = ScanStats::default();
    for path in scan_files(root, space, filter, &mut stats)? {
        let failed =
            |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
        let kept = admitted_groups(&path, filter, &mut stats)?;
        if kept.is_empty() {
            continue;
        }
        let builder = open_reader(&path)?;
        let has_audio = builder.parquet_schema().columns().iter().any(|c| c.name() == "audio");
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["segment_id"]);
        let reader = builder.with_projection(mask).with_row_groups(kept.clone()).build().map_err(|e| failed(&e))?;
        let mut row = None;
        let mut seen = 0;
        for batch in reader {
            let batch = batch.map_err(|e| failed(&e))?;
            let ids = batch.column(0).as_string::<i32>();
            if let Some(i) = (0..ids.len()).find(|&i| ids.value(i) == wanted) {
                row = Some(seen + i);
                break;
            }
            seen += batch.num_rows();
        }
        let Some(row) = row else { continue };
        if !has_audio {
            return Ok(Some(None));
        }
        let builder = open_reader(&path)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["audio"]);
        let selection = RowSelection::from(vec![RowSelector::skip(row), RowSelector::select(1)]);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(kept)
            .with_row_selection(selection)
            .build()
            .map_err(|e| failed(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| failed(&e))?;
            let audio = batch.column(0).as_binary::<i32>();
            if !audio.is_empty() {
                return Ok(Some((!audio.is_null(0)).then(|| audio.value(0).to_vec())));
            }
        }
        return Ok(Some(None));
    }
    Ok(None)
}

/// The latest refinement of a segment: what the refinements dataset's newest row for it says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatestRefinement {
    /// Label and its share of the label mass, if a label reached the segment.
    pub label: Option<(String, f32)>,
    /// Cluster (smallest segment id of its component).
    pub cluster: Option<SegmentId>,
    /// `updated_at` (µs) and round of the row, which order a segment's rows.
    version: (i64, i64),
}

/// The latest refinement of every segment of `space` in the refinements dataset under `root` (rows are changes: the
/// latest `updated_at`, then `round`, holds). Refined embeddings are never read.
pub fn latest_refinements(root: &Path, space: &str) -> Result<HashMap<SegmentId, LatestRefinement>, Error> {
    let mut latest: HashMap<SegmentId, LatestRefinement> = HashMap::new();
    for path in files(root, space)? {
        let failed =
            |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
        let builder = open_reader(&path)?;
        let wanted = ["segment_id", "label", "label_score", "cluster", "round", "updated_at"];
        let mask = ProjectionMask::columns(builder.parquet_schema(), wanted);
        let reader = builder.with_projection(mask).with_batch_size(8_192).build().map_err(|e| failed(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| failed(&e))?;
            let column =
                |name: &str| batch.column_by_name(name).ok_or_else(|| failed(&format!("column {name} is missing")));
            let ids = column("segment_id")?.as_string::<i32>();
            let labels = column("label")?.as_string::<i32>();
            let scores = column("label_score")?.as_primitive::<Float32Type>();
            let clusters = column("cluster")?.as_string::<i32>();
            let rounds = column("round")?.as_primitive::<Int64Type>();
            let updated = column("updated_at")?.as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let id: SegmentId = ids.value(i).parse().map_err(|e: String| failed(&e))?;
                let version = (updated.value(i), rounds.value(i));
                let entry = latest
                    .entry(id)
                    .or_insert_with(|| LatestRefinement { version: (i64::MIN, 0), ..Default::default() });
                if version < entry.version {
                    continue;
                }
                entry.version = version;
                entry.label = (!labels.is_null(i)).then(|| (labels.value(i).to_owned(), scores.value(i)));
                entry.cluster = if clusters.is_null(i) {
                    None
                } else {
                    Some(clusters.value(i).parse().map_err(|e: String| failed(&e))?)
                };
            }
        }
    }
    Ok(latest)
}

/// Writes the segments of a stream to the archive. The returned stream carries no data: its frontier is what has
/// been written and synced, for the probe that gates offset commits. `metrics` counts the rows written, times the
/// writes (stage `archive`) and follows the rows waiting (queue `archive`).
pub fn sink<'scope>(
    stream: StreamVec<'scope, u64, Segment>,
    mut writer: ArchiveWriter,
    fatal: Fatal,
    metrics: Metrics,
) -> StreamVec<'scope, u64, ()> {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new("Archive".to_owned(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(stream, Pipeline);
    let (written_out, written) = builder.new_output::<Vec<()>>();
    let _written_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(written_out);
    let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
    let interval = writer.settings.flush_interval;
    builder.build(move |_initial| {
        let mut unwritten: HashMap<u64, Capability<u64>> = HashMap::new();
        move |frontiers| {
            input.for_each(|capability, segments| {
                let time = *capability.least().expect("segments travel with a time");
                metrics.queued("archive", segments.len() as i64);
                for segment in segments.drain(..) {
                    writer.add(segment);
                }
                unwritten.entry(time).or_insert_with(|| capability.delayed(&time, 0));
            });
            if unwritten.is_empty() {
                return;
            }
            if frontiers[0].is_empty() || writer.due() {
                let rows = writer.buffered();
                let started = Instant::now();
                match writer.flush() {
                    Ok(_) => {
                        unwritten.clear();
                        metrics.time("archive", started);
                        metrics.count("archive", rows, rows);
                        metrics.queued("archive", -(rows as i64));
                    }
                    Err(error) => fatal.raise(error.to_string()),
                }
            }
            if !unwritten.is_empty() {
                wakeup.within(interval.min(Duration::from_secs(1)));
            }
        }
    });
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_operators::record::SegmentKey;

    fn settings(dir: &Path) -> ArchiveSettings {
        ArchiveConfig { dir: dir.to_path_buf(), max_rows_per_file: 3, ..Default::default() }
            .build(Path::new("/"))
            .unwrap()
    }

    fn seg(space: &str, sensor: &str, start: i64, value: f32) -> Segment {
        Segment {
            key: SegmentKey { space: space.into(), sensor: sensor.into(), start, sample_rate: 32_000, len: 160_000 },
            coverage: 1.0,
            origin: Origin { topic: "audio".into(), partition: 0, offset: start },
            resumed: false,
            embedding: vec![value, -value, 0.5 * value, 0.0],
            audio: vec![(value * 1000.0) as i16; 8],
        }
    }

    #[test]
    fn quantisation_round_trips_within_half_a_step() {
        let v = vec![0.3, -1.2, 0.0, 0.75];
        let (scale, q) = quantize(&v);
        for (a, b) in v.iter().zip(dequantize(scale, &q)) {
            assert!((a - b).abs() <= scale / 2.0 + 1e-7);
        }
        assert_eq!(dequantize(1.0, &quantize(&[0.0; 3]).1), vec![0.0; 3]);
    }

    #[test]
    fn segments_are_written_per_space_and_day_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ArchiveWriter::new(settings(dir.path()), "standin", 4, "w0");
        let day = 1_777_611_600i64 * 32_000; // 2026-05-01T05:00:00Z on the 32 kHz clock
        for i in 0..4 {
            writer.add(seg("default", "s1", day + i * 160_000, i as f32 + 1.0));
        }
        writer.add(seg("forest", "s2", day + 86_400 * 32_000, 2.0));
        let written = writer.flush().unwrap();
        assert_eq!(written.len(), 3, "{written:?}"); // 3 + 1 rows for default, 1 for forest
        assert!(written[0].starts_with(dir.path().join("space=default/date=2026-05-01")));
        assert_eq!(spaces(dir.path()).unwrap(), vec!["default", "forest"]);

        let mut rows = Vec::new();
        read_space(dir.path(), "default", true, |s| rows.push(s)).unwrap();
        rows.sort_by_key(|r| r.start_micros);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].id, SegmentId::of("default", "s1", day));
        assert_eq!(rows[0].start_micros, 1_777_611_600_000_000);
        assert_eq!(rows[0].end_micros - rows[0].start_micros, 5_000_000);
        let e = rows[2].embedding.as_ref().unwrap();
        assert!((e[0] - 3.0).abs() < 0.02 && (e[1] + 3.0).abs() < 0.02);

        let mut light = Vec::new();
        read_space(dir.path(), "forest", false, |s| light.push(s)).unwrap();
        assert_eq!((light.len(), light[0].embedding.is_none(), light[0].space.as_str()), (1, true, "forest"));
    }

    #[test]
    fn scans_skip_the_days_and_row_groups_whose_statistics_rule_the_filter_out() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ArchiveConfig { dir: dir.path().to_path_buf(), max_rows_per_file: 50, ..Default::default() }
            .build(Path::new("/"))
            .unwrap();
        let mut writer = ArchiveWriter::new(settings, "standin", 4, "w0");
        let day = 1_777_593_600i64 * 32_000; // 2026-05-01T00:00:00Z on the 32 kHz clock
        // Four sensors interleaved in arrival order, over two days: the writer sorts each file by sensor and time.
        for i in 0..400i64 {
            let sensor = format!("s{}", i % 4);
            writer.add(seg("default", &sensor, day + (i / 4) * 160_000 * 20 + (i / 200) * 86_400 * 32_000, 1.0));
        }
        writer.flush().unwrap();
        let mut all = Vec::new();
        read_space(dir.path(), "default", false, |r| all.push(r)).unwrap();
        assert_eq!(all.len(), 400);

        let hour = 3_600_000_000i64;
        let t0 = 1_777_593_600_000_000i64;
        let filter =
            Filter { sensors: vec!["s2".into()], from_micros: Some(t0 + hour), to_micros: Some(t0 + 3 * hour) };
        let mut stats = ScanStats::default();
        let mut found = Vec::new();
        for path in scan_files(dir.path(), "default", &filter, &mut stats).unwrap() {
            scan_file(&path, &filter, false, &mut stats, &mut |r| found.push(r.id)).unwrap();
        }
        let mut expected: Vec<SegmentId> =
            all.iter().filter(|r| filter.admits(&r.sensor, r.start_micros)).map(|r| r.id).collect();
        expected.sort();
        found.sort();
        assert!(!expected.is_empty());
        assert_eq!(found, expected);
        assert_eq!((stats.partitions, stats.partitions_skipped), (2, 1), "{stats:?}");
        assert_eq!(stats.files, 4, "{stats:?}");
        assert_eq!(stats.row_groups_skipped, 3, "only the file holding s2 is decoded: {stats:?}");
        assert_eq!((stats.rows_read, stats.rows_matched), (50, expected.len()), "{stats:?}");
    }

    #[test]
    fn the_latest_refinement_row_of_a_segment_holds() {
        let dir = tempfile::tempdir().unwrap();
        let row = |id: u64, label: Option<&str>, round: u64| RefinementRow {
            id: SegmentId(id),
            space: "default".into(),
            sensor: "s".into(),
            start_micros: 1_777_593_600_000_000,
            label: label.map(|l| (l.to_owned(), 0.75)),
            cluster: Some(SegmentId(1)),
            refined: None,
            round,
        };
        let mut writer = RefinementWriter::new(dir.path(), 4, 3, "w0");
        writer.add(row(1, Some("wren"), 1));
        writer.add(row(2, Some("wren"), 1));
        writer.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        writer.add(row(2, None, 2));
        writer.add(row(3, Some("robin"), 2));
        writer.flush().unwrap();
        let latest = latest_refinements(dir.path(), "default").unwrap();
        assert_eq!(latest.len(), 3);
        assert_eq!(latest[&SegmentId(1)].label, Some(("wren".into(), 0.75)));
        assert_eq!(latest[&SegmentId(2)].label, None, "the later row took the label away");
        assert_eq!(latest[&SegmentId(3)].label.as_ref().map(|l| l.0.as_str()), Some("robin"));
        assert_eq!(latest[&SegmentId(3)].cluster, Some(SegmentId(1)));
    }

    #[test]
    fn a_segments_audio_is_read_back_alone_or_is_absent_when_not_kept() {
        let day = 1_777_593_600i64 * 32_000;
        for keep in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let settings = ArchiveConfig { dir: dir.path().to_path_buf(), audio: keep, ..Default::default() }
                .build(Path::new("/"))
                .unwrap();
            let mut writer = ArchiveWriter::new(settings, "standin", 4, "w0");
            for i in 0..5 {
                let mut segment = seg("default", &format!("s{i}"), day + i * 160_000, 1.0);
                segment.audio = (0..8).map(|k| (i * 100 + k) as i16).collect();
                writer.add(segment);
            }
            writer.flush().unwrap();
            let id = SegmentId::of("default", "s3", day + 3 * 160_000);
            let filter = Filter { sensors: vec!["s3".into()], ..Default::default() };
            for filter in [Filter::default(), filter] {
                let wav = segment_audio(dir.path(), "default", id, &filter).unwrap();
                if !keep {
                    assert_eq!(wav, Some(None), "archived, without audio");
                    continue;
                }
                let audio = crate::wav::decode(&wav.unwrap().unwrap(), &Default::default()).unwrap();
                assert_eq!(audio.sample_rate, 32_000);
                let pcm: Vec<i16> = audio.samples.iter().map(|&x| chorus_operators::record::pcm16(x)).collect();
                assert_eq!(pcm, (300..308).collect::<Vec<i16>>());
            }
            assert_eq!(segment_audio(dir.path(), "default", SegmentId(7), &Filter::default()).unwrap(), None);
        }
    }

    #[test]
    fn without_audio_the_byte_bound_never_writes_a_file_early() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ArchiveConfig { dir: dir.path().to_path_buf(), audio: false, ..Default::default() }
            .build(Path::new("/"))
            .unwrap();
        let mut writer = ArchiveWriter::new(settings, "standin", 4, "w0");
        writer.limit_audio(0);
        writer.add(seg("default", "s1", 1_777_593_600 * 32_000, 1.0));
        assert!(!writer.due(), "one row, no audio, no time elapsed: not due");
    }
}
