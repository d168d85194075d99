//! The archive writer: buffers segments per space and day and writes each buffer as one Parquet file once it is full,
//! old enough or holding too much audio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow_array::builder::{BinaryBuilder, FixedSizeBinaryBuilder};
use arrow_array::{
    ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::SchemaRef;
use chorus_operators::record::{Nanos, Segment};

use super::layout::{date_of, partition_dir, publish};
use super::{ArchiveSettings, quantize, schema};
use crate::Error;

/// Audio bytes a writer holds at most before it writes its files, whatever the flush interval: 64 MiB (about 200
/// windows of 5 s at 32 kHz); [`ArchiveWriter::limit_audio`] lowers it.
pub const MAX_BUFFERED_AUDIO: usize = 64 << 20;
/// The least audio a writer holds before the byte bound writes its files: 2 MiB, a few windows per file.
const MIN_BUFFERED_AUDIO: usize = 2 << 20;

/// Buffers segments and writes them as Parquet files, one per space and day.
pub struct ArchiveWriter {
    pub(super) settings: ArchiveSettings,
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
            for part in segments.chunks_mut(self.settings.max_rows_per_file) {
                written.push(self.write_file(&space, &date, part)?);
            }
        }
        self.oldest = None;
        self.audio_bytes = 0;
        Ok(written)
    }

    /// Writes `segments` as one file; their audio is taken (the file holds it).
    fn write_file(&self, space: &str, date: &str, segments: &mut [Segment]) -> Result<PathBuf, Error> {
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

    /// The rows of `segments`, taking each one's audio as its WAV file is made: the samples and the WAV files are
    /// never all held at once.
    fn batch(&self, segments: &mut [Segment]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let micros = |t: Nanos| t.div_euclid(1_000);
        let mut embedding = FixedSizeBinaryBuilder::with_capacity(segments.len(), self.dim as i32);
        let mut scales = Vec::with_capacity(segments.len());
        for segment in segments.iter() {
            let (scale, q) = quantize(&segment.embedding);
            scales.push(scale);
            embedding.append_value(&q)?;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(segments.iter().map(|s| s.key.id().to_string()))),
            Arc::new(StringArray::from_iter_values(segments.iter().map(|s| s.key.space.as_str()))),
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
            Arc::new(audio_column(segments)),
        ];
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// Bytes of a 16-bit mono WAV file's header.
const WAV_HEADER_BYTES: usize = 44;

/// The `audio` column: each segment's samples as a 16-bit WAV file (null without audio), taken from the segment as
/// its file is made, into a column sized for them all at once (grown by doubling, its buffer held up to twice the
/// audio and copied it at each step).
fn audio_column(segments: &mut [Segment]) -> BinaryArray {
    let bytes = segments.iter().filter(|s| !s.audio.is_empty()).map(|s| WAV_HEADER_BYTES + 2 * s.audio.len()).sum();
    let mut column = BinaryBuilder::with_capacity(segments.len(), bytes);
    for segment in segments {
        let samples = std::mem::take(&mut segment.audio);
        if samples.is_empty() {
            column.append_null();
        } else {
            column.append_value(crate::wav::encode_pcm16(segment.key.sample_rate, &samples));
        }
    }
    column.finish()
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use chorus_operators::record::{Origin, SegmentId, SegmentKey};

    use arrow_array::Array;

    use super::*;
    use crate::parquet::{ArchiveConfig, read_space, spaces};

    fn settings(dir: &Path) -> ArchiveSettings {
        ArchiveConfig { dir: dir.to_path_buf(), max_rows_per_file: 3, ..Default::default() }
            .build(Path::new("/"))
            .unwrap()
    }

    pub(crate) fn seg(space: &str, sensor: &str, start: i64, value: f32) -> Segment {
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
    fn the_audio_column_takes_each_rows_samples_into_a_buffer_sized_once() {
        let mut segments: Vec<Segment> = (0..3).map(|i| seg("default", "s1", i * 160_000, 1.0 + i as f32)).collect();
        segments[1].audio = vec![7; 16_000];
        segments[2].audio.clear();
        let wavs: Vec<Vec<u8>> = segments[..2].iter().map(|s| crate::wav::encode_pcm16(32_000, &s.audio)).collect();
        let column = audio_column(&mut segments);
        assert_eq!((column.value(0), column.value(1), column.is_null(2)), (&wavs[0][..], &wavs[1][..], true));
        assert!(segments.iter().all(|s| s.audio.is_empty()), "the samples are taken");
        // The headers are as reckoned, so the values' buffer was sized once, to the byte.
        assert_eq!(column.value_data().len(), 2 * WAV_HEADER_BYTES + 2 * (8 + 16_000));
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
