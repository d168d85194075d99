//! Compaction: merges the small files of a day partition into large files sorted by sensor and time, and swaps them
//! in so that every reader sees each row exactly once at every moment.
//!
//! A round for one partition, under the space's compactor lock (one compactor per space, across processes):
//! 1. **Choose** ([`choose`]): on a day still written, the `fanout` smallest files of the smallest size tier holding
//!    that many, among the files below `open_file_bytes` (each row is rewritten about
//!    log_fanout(open_file_bytes / 1 MiB) times while its day is written, then once when it closes); on a closed
//!    day, everything but its largest file, or everything, so that it keeps at most two files.
//! 2. **Merge** the chosen files, each sorted by sensor and time as every chorus writer writes them, into new files in
//!    the staging directory beside the dataset (`.<dir name>.staging`, where no reader of the dataset looks): a
//!    streaming k-way merge holding one batch per input, its rows sized by `memory_bytes`, in row groups of at most
//!    8 192 rows and 32 MiB (sharp `sensor` and `start_time` statistics), files of at most `max_file_bytes`.
//! 3. **Swap**, under the partition's exclusive lock (writers hold it shared while they publish): a new directory in
//!    the staging area receives hard links to the partition's files that were not merged and the merged files, and
//!    `renameat2(RENAME_EXCHANGE)` swaps it with the partition in one step. A reader listing the partition sees either
//!    every old file or every new one; a crash at any point leaves one of the two in place, and the staging area's
//!    leftovers are removed by the next round.
//! 4. The old directory stays in the staging area for `grace` (a reader that opened it keeps reading it whole), then
//!    goes.
//!
//! Rows are kept as they are: every row of the inputs is in the outputs once (the refinements dataset keeps all its
//! rows, so its latest-row-per-segment reading is unchanged). Files of earlier builds (`space` dictionary-encoded)
//! are rewritten in today's layout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
use parquet::file::metadata::KeyValue;

use super::layout::{ROW_GROUP_ROWS, days, lock_partition, open_reader, partition_dir, writer_properties};
use super::schema::Strings;
use crate::Error;

/// Bytes of a merged row group at most (less when `memory_mb` is small): with audio (220 KB a row) about 150 rows, so
/// a group holds a run of one sensor.
const ROW_GROUP_BYTES: usize = 32 << 20;
/// Files merged in one pass at most; more are merged in passes through the staging area. The memory bound lowers it.
const MAX_MERGE_INPUTS: usize = 64;
/// What an input being read holds besides its batch: a compressed and a decompressed page of each column (pages are
/// 1 MiB at most).
const INPUT_PAGE_BYTES: usize = 2 << 20;
/// The smallest size tier: files below it are all of tier 0.
const TIER_BASE_BYTES: u64 = 1 << 20;

/// How compaction runs, validated from `[archive.compaction]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Compaction {
    /// Files of one size tier merged together on a day still written (and the most a tier keeps).
    pub fanout: usize,
    /// A day before today (UTC) is closed once its newest file is this old.
    pub close_after: Duration,
    /// Bytes of a merged file at most.
    pub max_file_bytes: u64,
    /// On a day still written, files of at least this many bytes are merged no more until the day closes: large
    /// enough for readers, and each merge beyond it would rewrite the day's audio again for no reader's gain.
    pub open_file_bytes: u64,
    /// Bytes of rows a merge holds in memory at most, over all its inputs.
    pub memory_bytes: usize,
    /// How long a swapped-out directory is kept for readers that opened it.
    pub grace: Duration,
    /// zstd level of the merged files.
    pub zstd_level: i32,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            fanout: 8,
            close_after: Duration::from_secs(3_600),
            max_file_bytes: 4 << 30,
            open_file_bytes: 128 << 20,
            memory_bytes: 64 << 20,
            grace: Duration::from_secs(600),
            zstd_level: 3,
        }
    }
}

impl Compaction {
    /// Files one merge pass reads at once: as many as a quarter of the memory bound holds pages for (2 to 64).
    pub fn inputs_per_pass(&self) -> usize {
        (self.memory_bytes / 4 / INPUT_PAGE_BYTES).clamp(2, MAX_MERGE_INPUTS)
    }
}

/// What one merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Tenant.
    pub space: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// Files merged, and their bytes.
    pub files_in: usize,
    /// Bytes of the files merged.
    pub bytes_in: u64,
    /// Files written, and their bytes.
    pub files_out: usize,
    /// Bytes of the files written.
    pub bytes_out: u64,
    /// Rows moved (the same in and out).
    pub rows: u64,
    /// Files in the partition after the swap.
    pub files_after: usize,
}

/// The key of a file's key-value metadata that says its rows' audio was pruned (`chorus prune
/// --audio-older-than-days`); its value says which rows kept theirs.
pub const AUDIO_PRUNED_KEY: &str = "chorus.audio_pruned";

/// An audio prune: which rows keep their audio, and what the rewritten files say of it (see [`AUDIO_PRUNED_KEY`]).
pub struct AudioPrune<'a> {
    /// Whether the row of this segment id keeps its audio.
    pub keep: &'a dyn Fn(&str) -> bool,
    /// The value of [`AUDIO_PRUNED_KEY`] in the files written.
    pub marker: &'a str,
}

/// `batch` with the audio of the rows `audio` does not keep set to null.
fn pruned(batch: RecordBatch, audio: Option<&AudioPrune>) -> RecordBatch {
    let Some(audio) = audio else { return batch };
    let (Ok(at), Some(ids)) =
        (batch.schema().index_of("audio"), batch.column_by_name("segment_id").and_then(|c| c.as_string_opt::<i32>()))
    else {
        return batch;
    };
    let Some(wavs) = batch.column(at).as_binary_opt::<i32>() else { return batch };
    let kept: BinaryArray = (0..batch.num_rows())
        .map(|i| if (audio.keep)(ids.value(i)) { wavs.is_valid(i).then(|| wavs.value(i)) } else { None })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[at] = Arc::new(kept);
    RecordBatch::try_new(batch.schema(), columns).expect("the same columns")
}

/// Rewrites the day partition `space`/`date` of the archive under `root` whole (as one compaction, swapped in the
/// same way), with the audio of the rows `audio` does not keep set to null; every other column and every row stays.
pub fn prune_audio(
    root: &Path,
    space: &str,
    date: &str,
    compaction: &Compaction,
    audio: &AudioPrune,
) -> Result<Merged, Error> {
    let staged = staging_dir(root)?.join(format!("space={space}"));
    let space_dir = root.join(format!("space={space}"));
    let Some(_compactor) = try_lock(&space_dir.join(".compactor.lock")).map_err(|e| archive_error(&space_dir, &e))?
    else {
        return Err(archive_error(&space_dir, &"another compaction is working on this space; try again"));
    };
    clean_staging(&staged, compaction.grace)?;
    let inputs = list_parts(&partition_dir(root, space, date))?;
    let partition = Partition { root, space, date };
    compact_files(partition, &inputs, &staged, compaction, &AtomicBool::new(false), Some(audio))
}

/// What a file holds of audio: the compressed bytes of its `audio` column, its rows, and what an audio prune wrote
/// of it ([`AUDIO_PRUNED_KEY`]), if one did.
pub fn file_audio(file: &super::ArchiveFile) -> Result<(u64, u64, Option<String>), Error> {
    let builder = file.reader()?;
    let metadata = builder.metadata();
    let mut bytes = 0;
    let mut rows = 0;
    for group in metadata.row_groups() {
        rows += group.num_rows() as u64;
        for column in group.columns() {
            if column.column_path().string() == "audio" {
                bytes += column.compressed_size() as u64;
            }
        }
    }
    Ok((bytes, rows, audio_pruned(metadata)))
}

/// The value of [`AUDIO_PRUNED_KEY`] in a file's metadata, if it has one.
pub fn audio_pruned(metadata: &parquet::file::metadata::ParquetMetaData) -> Option<String> {
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == AUDIO_PRUNED_KEY)
        .and_then(|kv| kv.value.clone())
}

/// A file of a partition as [`choose`] sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its bytes.
    pub bytes: u64,
    /// How long ago it was last written.
    pub age: Duration,
    /// Written by an earlier build (a layout compaction rewrites).
    pub legacy: bool,
}

/// Which files of a partition to merge (indices into `files`), empty for none. `closed`: no more rows are expected.
/// On a day still written, files of `open_file_bytes` or more wait for it to close.
pub fn choose(files: &[Candidate], closed: bool, fanout: usize, open_file_bytes: u64) -> Vec<usize> {
    let all: Vec<usize> = (0..files.len()).collect();
    if files.iter().any(|f| f.legacy) {
        return all;
    }
    if closed {
        if files.len() <= 2 {
            return Vec::new();
        }
        // Keep the largest file when the rest is small beside it (late rows), so a closed day is not rewritten
        // whole for each late file; otherwise everything becomes one file.
        let largest = (0..files.len()).max_by_key(|&i| files[i].bytes).expect("files");
        let rest: u64 = files.iter().map(|f| f.bytes).sum::<u64>() - files[largest].bytes;
        if files[largest].bytes >= 4 * rest {
            return all.into_iter().filter(|&i| i != largest).collect();
        }
        return all;
    }
    let fanout = fanout.max(2);
    let tier = |bytes: u64| {
        let mut tier = 0;
        let mut bound = TIER_BASE_BYTES;
        while bytes >= bound {
            tier += 1;
            bound = bound.saturating_mul(fanout as u64);
        }
        tier
    };
    let mut tiers: Vec<(usize, u64, usize)> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.bytes < open_file_bytes)
        .map(|(i, f)| (tier(f.bytes), f.bytes, i))
        .collect();
    tiers.sort();
    for chunk in tiers.chunk_by(|a, b| a.0 == b.0) {
        if chunk.len() >= fanout {
            // The tier's `fanout` smallest files: a tier that grew long while merges could not keep up (a backlog,
            // a job started on a day of small files) merges fanout at a time, each published as it ends, rather
            // than all at once in log2(files) passes, none published before the last; and the smallest, so that a
            // file merged before does not merge again with each few new ones of its tier.
            let mut chosen: Vec<usize> = chunk.iter().take(fanout).map(|&(_, _, i)| i).collect();
            chosen.sort_unstable();
            return chosen;
        }
    }
    Vec::new()
}

/// The staging directory of the dataset under `root`: beside it (the same filesystem, for links and the swap), never
/// under it (DuckDB's `**` descends into hidden directories).
pub fn staging_dir(root: &Path) -> Result<PathBuf, Error> {
    let absolute =
        fs::canonicalize(root).or_else(|_| std::path::absolute(root)).map_err(|e| archive_error(root, &e))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.join(format!(".{}.staging", name.to_string_lossy()))),
        _ => Err(archive_error(root, &"a dataset at the filesystem's root has no place beside it to stage compaction")),
    }
}

fn archive_error(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::Archive { path: path.display().to_string(), message: e.to_string() }
}

/// Compacts every day partition of the dataset under `root` (the archive or the refinements dataset) that
/// [`choose`] picks; days before `today` whose newest file is `close_after` old are closed. `layout` also picks every
/// partition holding a file of an earlier build (reading each file's footer). A space another compactor holds is
/// skipped. `each` hears of every merge as it is published. Setting `stop` ends a merge under way between two of its
/// batches, with an error; what it staged goes in the next round.
pub fn compact_dataset(
    root: &Path,
    compaction: &Compaction,
    today: chrono::NaiveDate,
    layout: bool,
    stop: &AtomicBool,
    each: &mut dyn FnMut(&Merged),
) -> Result<Vec<Merged>, Error> {
    let mut merged = Vec::new();
    if !root.exists() {
        return Ok(merged);
    }
    let staging = staging_dir(root)?;
    fs::create_dir_all(&staging).map_err(|e| archive_error(&staging, &e))?;
    let device = |path: &Path| fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
    if device(root).map_err(|e| archive_error(root, &e))?
        != device(&staging).map_err(|e| archive_error(&staging, &e))?
    {
        return Err(archive_error(
            root,
            &format!(
                "compaction stages its files in {}, which is on another filesystem; it needs both on one (mount the \
                 dataset's parent directory rather than the dataset itself)",
                staging.display()
            ),
        ));
    }
    for space in super::spaces(root)? {
        let space_dir = root.join(format!("space={space}"));
        let Some(_compactor) =
            try_lock(&space_dir.join(".compactor.lock")).map_err(|e| archive_error(&space_dir, &e))?
        else {
            continue;
        };
        let staged = staging.join(format!("space={space}"));
        clean_staging(&staged, compaction.grace)?;
        for (date, _) in days(root, &space)? {
            let dir = partition_dir(root, &space, &date);
            loop {
                let (listed, candidates): (Vec<PathBuf>, Vec<Candidate>) = files_now(&dir, layout)?.into_iter().unzip();
                let closed = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok_and(|d| d < today)
                    && candidates.iter().all(|c| c.age >= compaction.close_after);
                let chosen = choose(&candidates, closed, compaction.fanout, compaction.open_file_bytes);
                if chosen.is_empty() || (chosen.len() == 1 && !candidates[chosen[0]].legacy) {
                    break;
                }
                let inputs: Vec<PathBuf> = chosen.iter().map(|&i| listed[i].clone()).collect();
                let done = compact_files(
                    Partition { root, space: &space, date: &date },
                    &inputs,
                    &staged,
                    compaction,
                    stop,
                    None,
                )?;
                each(&done);
                merged.push(done);
                if closed || layout {
                    // A closed day is merged in one go; a day still written merges one tier per round.
                    break;
                }
            }
        }
    }
    Ok(merged)
}

/// The `part-*.parquet` files of a partition, in name order.
fn list_parts(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("part-") && name.ends_with(".parquet")
            })
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(archive_error(dir, &e)),
    };
    files.sort();
    Ok(files)
}

/// The files of a partition, each as a candidate.
fn files_now(dir: &Path, layout: bool) -> Result<Vec<(PathBuf, Candidate)>, Error> {
    let now = SystemTime::now();
    list_parts(dir)?
        .into_iter()
        .map(|path| {
            let meta = fs::metadata(&path).map_err(|e| archive_error(&path, &e))?;
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            let legacy = layout && {
                let builder = open_reader(&path)?;
                builder.schema().field_with_name("space").is_ok_and(|f| f.data_type() != &DataType::Utf8)
            };
            Ok((path, Candidate { bytes: meta.len(), age, legacy }))
        })
        .collect()
}

/// Takes the exclusive lock of `path` if it is free.
fn try_lock(path: &Path) -> std::io::Result<Option<fs::File>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Removes what earlier rounds left in a space's staging area: swapped-out directories older than `grace`, and
/// whatever a crashed round left (merges and swaps under way; the caller holds the space's compactor lock, so none
/// is under way now).
fn clean_staging(staged: &Path, grace: Duration) -> Result<(), Error> {
    let entries = match fs::read_dir(staged) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(archive_error(staged, &e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = name.starts_with("old-")
            && entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < grace);
        if !keep {
            fs::remove_dir_all(entry.path()).map_err(|e| archive_error(&entry.path(), &e))?;
        }
    }
    Ok(())
}

/// Merges `inputs` (files of the partition `space`/`date`) and swaps the result in.
fn compact_files(
    partition: Partition,
    inputs: &[PathBuf],
    staged: &Path,
    compaction: &Compaction,
    stop: &AtomicBool,
    audio: Option<&AudioPrune>,
) -> Result<Merged, Error> {
    let Partition { root, space, date } = partition;
    let stamp = format!("{}-{}", chrono::Utc::now().timestamp_micros(), std::process::id());
    let work = staged.join(format!("merge-{date}-{stamp}"));
    fs::create_dir_all(&work).map_err(|e| archive_error(&work, &e))?;
    let bytes_in = inputs.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut pass = 0;
    let mut current = inputs.to_vec();
    let mut rows;
    // More inputs than one pass takes are merged in passes.
    let per_pass = compaction.inputs_per_pass();
    let outputs = loop {
        let last = current.len() <= per_pass;
        let mut next = Vec::new();
        rows = 0;
        for (group, chunk) in current.chunks(per_pass).enumerate() {
            let name = format!("{stamp}-p{pass}-g{group}");
            let (files, merged_rows) = merge(chunk, &work, &name, compaction, stop, audio)?;
            next.extend(files);
            rows += merged_rows;
        }
        if pass > 0 {
            for file in &current {
                let _ = fs::remove_file(file);
            }
        }
        current = next;
        pass += 1;
        if last {
            break current;
        }
    };
    let bytes_out = outputs.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
    let files_after = swap(root, space, date, inputs, &outputs, staged, &stamp)?;
    let _ = fs::remove_dir_all(&work);
    Ok(Merged {
        space: space.to_owned(),
        date: date.to_owned(),
        files_in: inputs.len(),
        bytes_in,
        files_out: outputs.len(),
        bytes_out,
        rows,
        files_after,
    })
}

/// A day partition of a dataset.
#[derive(Clone, Copy)]
struct Partition<'a> {
    root: &'a Path,
    space: &'a str,
    date: &'a str,
}

/// One input of a merge: its reader and the batch it is at.
struct Input {
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    row: usize,
}

/// The order of a merge: sensor, start time, segment id.
type Key = (String, i64, String);

/// The sort key of row `row` of `batch`.
fn key(batch: &RecordBatch, row: usize) -> Key {
    let string =
        |name: &str| batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).map(|c| c.value(row).to_owned());
    let start = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .map(|c| c.value(row));
    let (string, start) = (|name| string(name).unwrap_or_default(), start.unwrap_or_default());
    (string("sensor"), start, string("segment_id"))
}

/// `batch` in today's layout, `schema`: `space` as a plain string.
fn normalise(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if let Ok(at) = batch.schema().index_of("space")
        && batch.column(at).data_type() != &DataType::Utf8
    {
        let strings = Strings::of(batch.column(at).as_ref()).ok_or("column space holds no strings")?;
        columns[at] = Arc::new(StringArray::from_iter_values((0..batch.num_rows()).map(|i| strings.value(i))));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// Today's layout of a file's schema.
fn target_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| if f.name() == "space" { Field::new("space", DataType::Utf8, false) } else { f.as_ref().clone() })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Merges `inputs`, each sorted by sensor, start time and id, into files `part-<name>-<n>.parquet` in `work`, sorted
/// the same way; returns them and the rows they hold.
fn merge(
    inputs: &[PathBuf],
    work: &Path,
    name: &str,
    compaction: &Compaction,
    stop: &AtomicBool,
    audio: Option<&AudioPrune>,
) -> Result<(Vec<PathBuf>, u64), Error> {
    // Bytes per row (uncompressed) of the widest input size the batches: one per input within the memory bound.
    let mut widest = 1usize;
    let mut builders = Vec::with_capacity(inputs.len());
    for path in inputs {
        let builder = open_reader(path)?;
        let metadata = builder.metadata().clone();
        let rows: i64 = metadata.row_groups().iter().map(|g| g.num_rows()).sum();
        let bytes: i64 = metadata.row_groups().iter().map(|g| g.total_byte_size()).sum();
        if rows > 0 {
            widest = widest.max((bytes / rows).max(1) as usize);
        }
        builders.push((path, builder));
    }
    // Of the memory bound: an eighth for the inputs' batches (and an eighth for their copies in today's layout), an
    // eighth for the rows picked and not yet written (and an eighth for them gathered into one batch), an eighth for
    // the row group being written, a quarter for the inputs' pages (see `inputs_per_pass`); the rest is the
    // allocator's and the encoders'.
    let eighth = compaction.memory_bytes / 8;
    let batch_rows = (eighth / (inputs.len().max(1) * widest)).clamp(1, 8_192);
    let out_rows = (eighth / widest).clamp(1, 8_192);
    let mut schema: Option<SchemaRef> = None;
    let mut cursors: Vec<Option<Input>> = Vec::with_capacity(inputs.len());
    for (path, builder) in builders {
        let target = target_schema(builder.schema());
        match &schema {
            None => schema = Some(target.clone()),
            Some(first) if first.fields() != target.fields() => {
                return Err(archive_error(
                    path,
                    &format!("its columns differ from {}'s; it cannot be merged", inputs[0].display()),
                ));
            }
            Some(_) => {}
        }
        let mut reader = builder.with_batch_size(batch_rows).build().map_err(|e| archive_error(path, &e))?;
        let cursor = next_batch(&mut reader, path, &target)?.map(|batch| Input { reader, batch, row: 0 });
        cursors.push(cursor);
    }
    let schema = schema.expect("inputs");
    let mut heap: BinaryHeap<Reverse<(Key, usize)>> = cursors
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|c| Reverse((key(&c.batch, c.row), i))))
        .collect();
    let mut out = Output::new(work, name, schema.clone(), compaction, audio.map(|a| a.marker));
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut rows = 0u64;
    while let Some(Reverse((_, i))) = heap.pop() {
        let cursor = cursors[i].as_mut().expect("a live input");
        pending.push((i, cursor.row));
        cursor.row += 1;
        let exhausted = cursor.row == cursor.batch.num_rows();
        if exhausted || pending.len() >= out_rows {
            // The rows picked so far refer to the inputs' current batches: write them before a batch is replaced.
            if stop.load(Ordering::Relaxed) {
                return Err(archive_error(work, &"compaction was stopped; the next round starts it again"));
            }
            rows += pending.len() as u64;
            out.write(&pruned(interleave(&cursors, &pending).map_err(|e| archive_error(work, &e))?, audio))?;
            pending.clear();
        }
        let cursor = cursors[i].as_mut().expect("a live input");
        if exhausted {
            match next_batch(&mut cursor.reader, &inputs[i], &schema)? {
                Some(batch) => {
                    cursor.batch = batch;
                    cursor.row = 0;
                }
                None => {
                    cursors[i] = None;
                    continue;
                }
            }
        }
        let cursor = cursors[i].as_ref().expect("a live input");
        heap.push(Reverse((key(&cursor.batch, cursor.row), i)));
    }
    if !pending.is_empty() {
        rows += pending.len() as u64;
        out.write(&pruned(interleave(&cursors, &pending).map_err(|e| archive_error(work, &e))?, audio))?;
    }
    Ok((out.finish()?, rows))
}

/// The next non-empty batch of `reader`, in today's layout.
fn next_batch(
    reader: &mut ParquetRecordBatchReader,
    path: &Path,
    schema: &SchemaRef,
) -> Result<Option<RecordBatch>, Error> {
    for batch in reader.by_ref() {
        let batch = batch.map_err(|e| archive_error(path, &e))?;
        if batch.num_rows() > 0 {
            return normalise(batch, schema).map(Some).map_err(|e| archive_error(path, &e));
        }
    }
    Ok(None)
}

/// The rows `picks` (input, row) of the inputs' current batches, in that order.
fn interleave(cursors: &[Option<Input>], picks: &[(usize, usize)]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut slots: Vec<usize> = picks.iter().map(|&(i, _)| i).collect();
    slots.sort_unstable();
    slots.dedup();
    let batches: Vec<&RecordBatch> = slots.iter().map(|&i| &cursors[i].as_ref().expect("a live input").batch).collect();
    let indices: Vec<(usize, usize)> =
        picks.iter().map(|&(i, row)| (slots.binary_search(&i).expect("a slot"), row)).collect();
    arrow_select::interleave::interleave_record_batch(&batches, &indices)
}

/// The files a merge writes: a new one whenever the current one reaches `max_file_bytes`.
struct Output<'a> {
    work: &'a Path,
    name: &'a str,
    schema: SchemaRef,
    compaction: &'a Compaction,
    marker: Option<&'a str>,
    writer: Option<(PathBuf, ArrowWriter<fs::File>)>,
    written: Vec<PathBuf>,
}

impl<'a> Output<'a> {
    fn new(
        work: &'a Path,
        name: &'a str,
        schema: SchemaRef,
        compaction: &'a Compaction,
        marker: Option<&'a str>,
    ) -> Self {
        Output { work, name, schema, compaction, marker, writer: None, written: Vec::new() }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        if self.writer.is_none() {
            let path = self.work.join(format!("part-{}-compacted-{:03}.parquet", self.name, self.written.len()));
            let file = fs::File::create(&path).map_err(|e| archive_error(&path, &e))?;
            let blobs: Vec<&str> = self
                .schema
                .fields()
                .iter()
                .filter(|f| matches!(f.data_type(), DataType::Binary | DataType::FixedSizeBinary(_)))
                .map(|f| f.name().as_str())
                .collect();
            let mut properties = writer_properties(self.compaction.zstd_level, &blobs);
            if let Some(marker) = self.marker {
                let note = KeyValue::new(AUDIO_PRUNED_KEY.to_owned(), marker.to_owned());
                properties = properties.into_builder().set_key_value_metadata(Some(vec![note])).build();
            }
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
                .map_err(|e| archive_error(&path, &e))?;
            self.writer = Some((path, writer));
        }
        let (path, writer) = self.writer.as_mut().expect("a writer");
        writer.write(batch).map_err(|e| archive_error(path, &e))?;
        let group_bytes = ROW_GROUP_BYTES.min(self.compaction.memory_bytes / 8);
        if writer.in_progress_size() >= group_bytes || writer.in_progress_rows() >= ROW_GROUP_ROWS {
            writer.flush().map_err(|e| archive_error(path, &e))?;
        }
        if writer.bytes_written() as u64 >= self.compaction.max_file_bytes {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some((path, writer)) = self.writer.take() {
            let file = writer.into_inner().map_err(|e| archive_error(&path, &e))?;
            file.sync_all().map_err(|e| archive_error(&path, &e))?;
            self.written.push(path);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<PathBuf>, Error> {
        self.close()?;
        Ok(self.written)
    }
}

/// Swaps the partition `space`/`date` for a copy holding its files but `inputs`, and `outputs`; returns the files
/// the partition holds now. The swapped-out directory stays in `staged` as `old-…` for the grace period.
fn swap(
    root: &Path,
    space: &str,
    date: &str,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    staged: &Path,
    stamp: &str,
) -> Result<usize, Error> {
    let dir = partition_dir(root, space, date);
    let failed = |path: &Path, e: &dyn std::fmt::Display| archive_error(path, e);
    let next = staged.join(format!("next-{date}-{stamp}"));
    fs::create_dir_all(&next).map_err(|e| failed(&next, &e))?;
    let _partition = lock_partition(&dir, true).map_err(|e| failed(&dir, &e))?;
    let mut kept = 0;
    for file in list_parts(&dir)? {
        if inputs.contains(&file) {
            continue;
        }
        let name = file.file_name().expect("a file name");
        fs::hard_link(&file, next.join(name))
            .map_err(|e| failed(&file, &format!("cannot link it for the swap: {e}")))?;
        kept += 1;
    }
    for output in outputs {
        let name = output.file_name().expect("a file name");
        fs::rename(output, next.join(name)).map_err(|e| failed(output, &e))?;
    }
    sync_dir(&next)?;
    rustix::fs::renameat_with(rustix::fs::CWD, &next, rustix::fs::CWD, &dir, rustix::fs::RenameFlags::EXCHANGE)
        .map_err(|e| failed(&dir, &format!("cannot swap in its compacted copy (renameat2 RENAME_EXCHANGE): {e}")))?;
    sync_dir(dir.parent().expect("a space directory"))?;
    let old = staged.join(format!("old-{date}-{stamp}"));
    fs::rename(&next, &old).map_err(|e| failed(&next, &e))?;
    sync_dir(staged)?;
    Ok(kept + outputs.len())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| archive_error(dir, &format!("cannot sync: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chorus_operators::record::SegmentId;

    use super::*;
    use crate::parquet::writer::tests::seg;
    use crate::parquet::{ArchiveConfig, ArchiveWriter, files, read_space};

    /// 2026-05-01T00:00:00Z on the 32 kHz clock.
    const DAY: i64 = 1_777_593_600 * 32_000;

    fn writer(root: &Path, name: &str) -> ArchiveWriter {
        let settings = ArchiveConfig { dir: root.to_path_buf(), ..Default::default() }.build(Path::new("/")).unwrap();
        ArchiveWriter::new(settings, "standin", 4, name)
    }

    /// Writes `files` files of `per_file` rows each, sensors interleaved, into 2026-05-01; returns every row's id
    /// and embedding.
    fn small_files(root: &Path, files: usize, per_file: usize) -> BTreeMap<SegmentId, Vec<f32>> {
        let mut writer = writer(root, "w0");
        let mut rows = BTreeMap::new();
        for f in 0..files {
            for r in 0..per_file {
                let n = (f * per_file + r) as i64;
                let segment = seg("default", &format!("s{}", n % 5), DAY + (n / 5) * 160_000, 1.0 + n as f32);
                rows.insert(segment.key.id(), segment.embedding.clone());
                writer.add(segment);
            }
            writer.flush().unwrap();
        }
        rows
    }

    fn read(root: &Path) -> Vec<(SegmentId, Vec<f32>)> {
        let mut rows = Vec::new();
        read_space(root, "default", true, |r| rows.push((r.id, r.embedding.unwrap()))).unwrap();
        rows
    }

    fn assert_each_row_once(root: &Path, expected: &BTreeMap<SegmentId, Vec<f32>>) {
        let rows = read(root);
        assert_eq!(rows.len(), expected.len(), "rows read");
        let by_id: BTreeMap<SegmentId, Vec<f32>> = rows.into_iter().collect();
        assert_eq!(by_id.len(), expected.len(), "ids read once each");
        for (id, embedding) in expected {
            let read = &by_id[id];
            assert!(read.iter().zip(embedding).all(|(a, b)| (a - b).abs() <= b.abs() / 100.0), "{id}");
        }
    }

    fn compact(
        root: &Path,
        compaction: &Compaction,
        today: chrono::NaiveDate,
        layout: bool,
    ) -> Result<Vec<Merged>, Error> {
        compact_dataset(root, compaction, today, layout, &AtomicBool::new(false), &mut |_| {})
    }

    fn closed() -> Compaction {
        Compaction { close_after: Duration::ZERO, ..Default::default() }
    }

    fn after(date: &str) -> chrono::NaiveDate {
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap().succ_opt().unwrap()
    }

    #[test]
    fn r16_a_closed_day_becomes_one_file_sorted_by_sensor_and_time_with_every_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let expected = small_files(&root, 12, 7);
        assert_eq!(files(&root, "default").unwrap().len(), 12);
        let merged = compact(&root, &closed(), after("2026-05-01"), false).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].files_in, merged[0].files_out, merged[0].rows, merged[0].files_after), (12, 1, 84, 1));
        let now = files(&root, "default").unwrap();
        assert_eq!(now.len(), 1);
        assert_each_row_once(&root, &expected);
        // Sorted by sensor, then time.
        let mut keys = Vec::new();
        read_space(&root, "default", false, |r| keys.push((r.sensor, r.start_micros))).unwrap();
        assert!(keys.is_sorted(), "{keys:?}");
        // In today's layout, and a second round has nothing to do.
        let schema = now[0].reader().unwrap().schema().clone();
        assert_eq!(schema.field_with_name("space").unwrap().data_type(), &DataType::Utf8);
        assert!(compact(&root, &closed(), after("2026-05-01"), false).unwrap().is_empty());
        // The staging area holds the swapped-out directory only, beside the dataset.
        let staged: Vec<String> = fs::read_dir(dir.path().join(".archive.staging/space=default"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(staged.len(), 1, "{staged:?}");
        assert!(staged[0].starts_with("old-2026-05-01-"), "{staged:?}");
    }

    #[test]
    fn r16_a_day_still_written_keeps_fewer_than_fanout_files_a_tier() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let mut expected = small_files(&root, 7, 3);
        let today = chrono::NaiveDate::parse_from_str("2026-05-01", "%Y-%m-%d").unwrap();
        // Seven small files: fewer than the fanout, nothing to do.
        assert!(compact(&root, &Compaction::default(), today, false).unwrap().is_empty());
        // Twenty: the tier merges its fanout smallest files at a time until fewer than the fanout are left
        // (20 files, then 13, then 6: four of the writers' and two merged ones, all below 1 MiB).
        let mut more = writer(&root, "w1");
        for n in 0..13i64 {
            let segment = seg("default", "s9", DAY + n * 160_000, 3.0 + n as f32);
            expected.insert(segment.key.id(), segment.embedding.clone());
            more.add(segment);
            more.flush().unwrap();
        }
        let merged = compact(&root, &Compaction::default(), today, false).unwrap();
        assert_eq!(merged.iter().map(|m| (m.files_in, m.files_after)).collect::<Vec<_>>(), vec![(8, 13), (8, 6)]);
        assert_each_row_once(&root, &expected);
    }

    #[test]
    fn r16_merges_in_passes_within_their_memory_bound_and_keep_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        // More files than one pass merges: passes of 4 within 32 MiB.
        let tight = Compaction { memory_bytes: 32 << 20, ..closed() };
        assert_eq!(tight.inputs_per_pass(), 4);
        let expected = small_files(&root, 13, 4);
        let merged = compact(&root, &tight, after("2026-05-01"), false).unwrap();
        assert_eq!((merged[0].files_in, merged[0].files_out), (13, 1));
        assert_each_row_once(&root, &expected);
        let mut keys = Vec::new();
        read_space(&root, "default", false, |r| keys.push((r.sensor, r.start_micros))).unwrap();
        assert!(keys.is_sorted());
    }

    #[test]
    fn r16_files_of_earlier_builds_are_rewritten_in_todays_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let expected = small_files(&root, 1, 6);
        let path = files(&root, "default").unwrap().remove(0);
        let batch = path.reader().unwrap().build().unwrap().next().unwrap().unwrap();
        fs::remove_file(path.path()).unwrap();
        let old = crate::parquet::scan::tests::with_dictionary_space(&batch);
        crate::parquet::layout::publish(path.parent().unwrap(), "old", &old, 3, &["embedding", "audio"]).unwrap();
        // One file of a day still written: only a layout round rewrites it.
        let today = chrono::NaiveDate::parse_from_str("2026-05-01", "%Y-%m-%d").unwrap();
        assert!(compact(&root, &Compaction::default(), today, false).unwrap().is_empty());
        let merged = compact(&root, &Compaction::default(), today, true).unwrap();
        assert_eq!((merged.len(), merged[0].rows), (1, 6));
        let now = files(&root, "default").unwrap();
        let schema = now[0].reader().unwrap().schema().clone();
        assert_eq!(schema.field_with_name("space").unwrap().data_type(), &DataType::Utf8);
        assert_each_row_once(&root, &expected);
    }

    #[test]
    fn r16_a_reader_reads_the_partition_it_listed_whole_across_a_swap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let expected = small_files(&root, 10, 5);
        let listed = files(&root, "default").unwrap();
        assert_eq!(listed.len(), 10);
        compact(&root, &closed(), after("2026-05-01"), false).unwrap();
        // The files listed before the swap are gone from the partition's path, and still read whole.
        assert!(!listed[0].path().exists());
        let mut rows = BTreeMap::new();
        for file in &listed {
            crate::parquet::read_file(file, true, &mut |r| {
                assert!(rows.insert(r.id, r.embedding.unwrap()).is_none(), "read twice");
            })
            .unwrap();
        }
        assert_eq!(rows.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
        // Past the grace period the swapped-out directory goes; a read of the old listing then says what happened.
        let no_grace = Compaction { grace: Duration::ZERO, ..closed() };
        small_files(&root, 3, 1);
        compact(&root, &no_grace, after("2026-05-01"), false).unwrap();
        let error = crate::parquet::read_file(&listed[0], false, &mut |_| {}).unwrap_err().to_string();
        assert!(error.contains("compacted away while this read ran"), "{error}");
    }

    #[test]
    fn r16_rows_published_during_a_compaction_are_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let mut expected = small_files(&root, 16, 4);
        let writing = std::thread::scope(|scope| {
            let into = root.clone();
            let writer = scope.spawn(move || {
                // A second writer publishes a file at a time while the compactor merges and swaps.
                let mut writer = writer(&into, "w1");
                let mut rows = BTreeMap::new();
                for n in 0..200i64 {
                    let segment = seg("default", "late", DAY + n * 160_000, 2.0 + n as f32);
                    rows.insert(segment.key.id(), segment.embedding.clone());
                    writer.add(segment);
                    writer.flush().unwrap();
                }
                rows
            });
            let today = chrono::NaiveDate::parse_from_str("2026-05-01", "%Y-%m-%d").unwrap();
            while !writer.is_finished() {
                let fast = Compaction { fanout: 2, ..Compaction::default() };
                compact(&root, &fast, today, false).unwrap();
            }
            writer.join().unwrap()
        });
        expected.extend(writing);
        assert_each_row_once(&root, &expected);
    }

    const OPEN: u64 = 128 << 20;

    fn candidate(mib: f64, legacy: bool) -> Candidate {
        Candidate { bytes: (mib * f64::from(1 << 20)) as u64, age: Duration::ZERO, legacy }
    }

    #[test]
    fn r16_a_day_still_written_merges_the_smallest_tier_that_holds_fanout_files() {
        let small = |n: usize| vec![candidate(0.1, false); n];
        assert!(choose(&small(7), false, 8, OPEN).is_empty());
        assert_eq!(choose(&small(8), false, 8, OPEN), (0..8).collect::<Vec<_>>());
        // A long tier (a backlog): fanout files at a time, the smallest.
        assert_eq!(choose(&small(150), false, 8, OPEN), (0..8).collect::<Vec<_>>());
        let mut files = vec![candidate(0.5, false)];
        files.extend(small(8));
        assert_eq!(choose(&files, false, 8, OPEN), (1..9).collect::<Vec<_>>());
        // Seven files of tier 1 (1-8 MiB) and eight of tier 0: tier 0 merges.
        let mut files = vec![candidate(2.0, false); 7];
        files.extend(small(8));
        assert_eq!(choose(&files, false, 8, OPEN), (7..15).collect::<Vec<_>>());
        // A legacy file anywhere: the whole partition is rewritten.
        let mut files = small(2);
        files.push(candidate(500.0, true));
        assert_eq!(choose(&files, false, 8, OPEN), vec![0, 1, 2]);
    }

    #[test]
    fn r15_a_day_still_written_leaves_files_of_open_file_bytes_for_its_close() {
        // Eight files of 130 MiB (tier 3, 64-512 MiB): above the 128 MiB ceiling, nothing merges while the day is
        // written; the smaller files beside them still do.
        let mut files = vec![candidate(130.0, false); 8];
        assert!(choose(&files, false, 8, OPEN).is_empty());
        assert_eq!(choose(&files, false, 8, 1 << 40), (0..8).collect::<Vec<_>>());
        files.extend(vec![candidate(0.1, false); 8]);
        assert_eq!(choose(&files, false, 8, OPEN), (8..16).collect::<Vec<_>>());
        // Closed, the day becomes one file whatever the sizes.
        assert_eq!(choose(&files, true, 8, OPEN), (0..16).collect::<Vec<_>>());
        // Files that max_file_bytes cut (4 GiB) are never rewritten while their day is written.
        files = vec![candidate(4096.0, false); 8];
        assert!(choose(&files, false, 8, OPEN).is_empty());
    }

    #[test]
    fn r16_a_closed_day_keeps_at_most_two_files() {
        assert!(choose(&[candidate(100.0, false), candidate(1.0, false)], true, 8, OPEN).is_empty());
        // Late files beside a large one: they merge, the large one stays.
        let files = [candidate(1.0, false), candidate(100.0, false), candidate(2.0, false)];
        assert_eq!(choose(&files, true, 8, OPEN), vec![0, 2]);
        // Comparable files: everything merges.
        let files = [candidate(10.0, false), candidate(20.0, false), candidate(15.0, false)];
        assert_eq!(choose(&files, true, 8, OPEN), vec![0, 1, 2]);
    }
}
