//! Reading the archive back: whole spaces, or scans pruned by the days of the partitions and the statistics of the
//! row groups, and one segment's row or audio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use chorus_operators::index::Filter;
use chorus_operators::record::{Origin, SegmentId};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::statistics::Statistics;

use super::dequantize;
use super::layout::{ArchiveFile, days, files};
use super::schema::Strings;
use crate::Error;

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
pub fn read_file(path: &ArchiveFile, embeddings: bool, each: &mut impl FnMut(ArchivedSegment)) -> Result<(), Error> {
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
pub fn scan_files(root: &Path, space: &str, filter: &Filter, stats: &mut ScanStats) -> Result<Vec<ArchiveFile>, Error> {
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
fn file_bounds(path: &ArchiveFile) -> Result<Arc<[Bounds]>, Error> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<[Bounds]>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(bounds) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path.path()) {
        return Ok(bounds.clone());
    }
    let builder = path.reader()?;
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
fn admitted_groups(path: &ArchiveFile, filter: &Filter, stats: &mut ScanStats) -> Result<Vec<usize>, Error> {
    let bounds = file_bounds(path)?;
    stats.files += 1;
    stats.row_groups += bounds.len();
    let kept: Vec<usize> = (0..bounds.len()).filter(|&i| filter.is_empty() || bounds[i].admit(filter)).collect();
    stats.row_groups_skipped += bounds.len() - kept.len();
    Ok(kept)
}

/// Reads the rows of one archive file that pass `filter`, decoding only the row groups whose statistics admit it.
pub fn scan_file(
    path: &ArchiveFile,
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
    let builder = path.reader()?;
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
        let space = Strings::of(column("space")?.as_ref()).ok_or_else(|| failed(&"column space holds no strings"))?;
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
                space: space.value(i).to_owned(),
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

/// What the archive holds of an archived segment's audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentAudio {
    /// The window as a WAV file.
    Wav(Vec<u8>),
    /// None: the segment was archived without it (`archive.audio` off).
    NotKept,
    /// None any more: `chorus prune --audio-older-than-days` removed it.
    Pruned,
}

/// The audio archived with segment `id` of `space`: `None` when the segment is not archived. `filter` narrows the
/// search: with the segment's sensor and start time it is one row group. Only the `segment_id` column is read to find
/// the row, then only that row's audio.
pub fn segment_audio(root: &Path, space: &str, id: SegmentId, filter: &Filter) -> Result<Option<SegmentAudio>, Error> {
    let wanted = id.to_string();
    let mut stats = ScanStats::default();
    for path in scan_files(root, space, filter, &mut stats)? {
        let failed =
            |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
        let kept = admitted_groups(&path, filter, &mut stats)?;
        if kept.is_empty() {
            continue;
        }
        let builder = path.reader()?;
        let has_audio = builder.parquet_schema().columns().iter().any(|c| c.name() == "audio");
        let absent = if super::compact::audio_pruned(builder.metadata()).is_some() {
            SegmentAudio::Pruned
        } else {
            SegmentAudio::NotKept
        };
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
            return Ok(Some(absent));
        }
        let builder = path.reader()?;
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
            if !audio.is_empty() && !audio.is_null(0) {
                return Ok(Some(SegmentAudio::Wav(audio.value(0).to_vec())));
            }
        }
        return Ok(Some(absent));
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use chorus_operators::record::SegmentId;

    use super::*;
    use crate::parquet::writer::tests::seg;
    use crate::parquet::{ArchiveConfig, ArchiveWriter};

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

    /// The rows of `segments` as earlier builds wrote them: `space` dictionary-encoded.
    pub(crate) fn with_dictionary_space(batch: &arrow_array::RecordBatch) -> arrow_array::RecordBatch {
        use arrow_array::types::Int32Type;
        use arrow_array::{ArrayRef, DictionaryArray};
        use arrow_schema::{DataType, Field, Schema};
        let at = batch.schema().index_of("space").unwrap();
        let spaces: DictionaryArray<Int32Type> = batch.column(at).as_string::<i32>().iter().collect();
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[at] =
            Field::new("space", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[at] = Arc::new(spaces);
        arrow_array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn r16_files_of_earlier_builds_with_a_dictionary_space_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            ArchiveConfig { dir: dir.path().to_path_buf(), ..Default::default() }.build(Path::new("/")).unwrap();
        let mut writer = ArchiveWriter::new(settings, "standin", 4, "w0");
        let day = 1_777_593_600i64 * 32_000;
        for i in 0..3 {
            writer.add(seg("forest", "s1", day + i * 160_000, 1.0));
        }
        let path = writer.flush().unwrap().remove(0);
        let mut today = Vec::new();
        read_space(dir.path(), "forest", true, |r| today.push(r)).unwrap();
        assert_eq!(today.len(), 3);
        // The same rows rewritten with the earlier layout of `space` read back the same.
        let batch = crate::parquet::layout::open_reader(&path).unwrap().build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.schema().field_with_name("space").unwrap().data_type(), &arrow_schema::DataType::Utf8);
        std::fs::remove_file(&path).unwrap();
        let old = with_dictionary_space(&batch);
        crate::parquet::layout::publish(path.parent().unwrap(), "old", &old, 3, &["embedding", "audio"]).unwrap();
        let mut earlier = Vec::new();
        read_space(dir.path(), "forest", true, |r| earlier.push(r)).unwrap();
        assert_eq!(earlier, today);
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
                let wav = match wav {
                    Some(SegmentAudio::Wav(wav)) => wav,
                    other => {
                        assert!(!keep, "{other:?}");
                        assert_eq!(other, Some(SegmentAudio::NotKept), "archived, without audio");
                        continue;
                    }
                };
                let audio = crate::wav::decode(&wav, &Default::default()).unwrap();
                assert_eq!(audio.sample_rate, 32_000);
                let pcm: Vec<i16> = audio.samples.iter().map(|&x| chorus_operators::record::pcm16(x)).collect();
                assert_eq!(pcm, (300..308).collect::<Vec<i16>>());
            }
            assert_eq!(segment_audio(dir.path(), "default", SegmentId(7), &Filter::default()).unwrap(), None);
        }
    }
}
