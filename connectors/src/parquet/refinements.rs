//! The refinements dataset: what the refinement says about each segment, one row per change, laid out like the archive
//! (`space=/date=` partitions, files published whole) and read back as the latest row per segment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::builder::FixedSizeBinaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chorus_operators::record::SegmentId;
use parquet::arrow::ProjectionMask;

use super::layout::{date_of, files, partition_dir, publish};
use super::quantize;
use crate::Error;

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
        Field::new("space", DataType::Utf8, false),
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
        for ((space, date), mut rows) in std::mem::take(&mut self.buffers) {
            // Sorted by sensor and time like the archive's files: row groups prune alike, and compaction merges them.
            rows.sort_by(|a, b| (&a.sensor, a.start_micros, a.id).cmp(&(&b.sensor, b.start_micros, b.id)));
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
        let mut refined = FixedSizeBinaryBuilder::with_capacity(rows.len(), self.dim as i32);
        let mut scales = Vec::with_capacity(rows.len());
        for row in rows {
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
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.space.as_str()))),
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
        let builder = path.reader()?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
