//! The archive's layout on disk: the `space=<space>/date=<YYYY-MM-DD>` directories, publishing a Parquet file whole
//! (temporary name, sync, rename), listing spaces, days and files, and cleaning up what a crash left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use chorus_operators::record::Nanos;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::Error;

/// The UTC day of `t`, `YYYY-MM-DD`: the `date=` partition of a row.
pub(super) fn date_of(t: Nanos) -> String {
    chrono::DateTime::from_timestamp_nanos(t).format("%Y-%m-%d").to_string()
}

/// Directory of one space's partition for one day.
pub fn partition_dir(root: &Path, space: &str, date: &str) -> PathBuf {
    root.join(format!("space={space}")).join(format!("date={date}"))
}

/// Rows per row group. A file is sorted by sensor and time, so in a large file (a backlog drained, a long flush
/// interval) each row group holds a run of few sensors and a narrow `sensor` statistic; a small file is one group.
pub(super) const ROW_GROUP_ROWS: usize = 8_192;

/// Holds the day partition `dir` against a swap: shared while a writer publishes a file into it, exclusive while
/// compaction swaps it for its compacted copy (see [`super::compact`]). The lock is the file
/// `space=<space>/.date=<day>.lock` beside the partition, so that it outlives the swap; flock(2) holds it across
/// threads and processes alike.
pub(super) fn lock_partition(dir: &Path, exclusive: bool) -> std::io::Result<fs::File> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::Error::other("not a partition directory"));
    };
    fs::create_dir_all(parent)?;
    let path = parent.join(format!(".{}.lock", name.to_string_lossy()));
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    if exclusive {
        file.lock()?
    } else {
        file.lock_shared()?
    }
    Ok(file)
}

/// Writes `batch` as `part-<millis>-<name>.parquet` in `dir`: under a temporary name, synced, then renamed, so a
/// reader never sees half a file. `blobs` names the columns left without dictionary and statistics (vectors, audio).
pub(super) fn publish(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    zstd_level: i32,
    blobs: &[&str],
) -> Result<PathBuf, Error> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Error::Archive {
        path: dir.display().to_string(),
        message: format!("{what}: {e}"),
    };
    let _partition = lock_partition(dir, false).map_err(|e| failed("cannot lock the partition", &e))?;
    fs::create_dir_all(dir).map_err(|e| failed("cannot create the directory", &e))?;
    let millis = chrono::Utc::now().timestamp_millis();
    let name = format!("part-{millis}-{name}.parquet");
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let written = (|| {
        let mut file = fs::File::create(&tmp).map_err(|e| failed("cannot create a file", &e))?;
        let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(writer_properties(zstd_level, blobs)))
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

/// How chorus writes its Parquet files: zstd at `zstd_level`, row groups of at most [`ROW_GROUP_ROWS`] rows, and the
/// `blobs` columns (vectors, audio) without dictionary and statistics.
pub(super) fn writer_properties(zstd_level: i32, blobs: &[&str]) -> WriterProperties {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level).expect("validated")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("chorus {}", env!("CARGO_PKG_VERSION")));
    for blob in blobs {
        properties = properties
            .set_column_dictionary_enabled(ColumnPath::from(*blob), false)
            .set_column_statistics_enabled(ColumnPath::from(*blob), EnabledStatistics::None);
    }
    properties.build()
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

/// A Parquet file of a day partition, held through the directory its partition was listed from: when compaction
/// swaps the partition for its compacted copy, the file is still opened in the directory it was listed in (kept
/// `archive.compaction.grace_seconds` after the swap), so a reader sees each partition whole, as it was listed —
/// never a file of both.
#[derive(Clone, Debug)]
pub struct ArchiveFile {
    path: PathBuf,
    dir: Arc<fs::File>,
}

impl ArchiveFile {
    /// Where the file was listed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file in the directory it was listed in.
    pub fn open(&self) -> std::io::Result<fs::File> {
        let name = self.path.file_name().ok_or_else(|| std::io::Error::other("not a file"))?;
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&*self.dir, name, flags, rustix::fs::Mode::empty())?;
        Ok(fs::File::from(fd))
    }

    /// Opens the file for reading as Parquet.
    pub(super) fn reader(&self) -> Result<ParquetRecordBatchReaderBuilder<fs::File>, Error> {
        let failed = |e: &dyn std::fmt::Display| Error::Archive {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let file = self.open().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                failed(
                    &"it was compacted away while this read ran, after archive.compaction.grace_seconds; run it again",
                )
            } else {
                failed(&e)
            }
        })?;
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| failed(&e))
    }
}

impl std::ops::Deref for ArchiveFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ArchiveFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// The Parquet files of one space, oldest day first.
pub fn files(root: &Path, space: &str) -> Result<Vec<ArchiveFile>, Error> {
    Ok(days(root, space)?.into_iter().flat_map(|(_, files)| files).collect())
}

/// The day partitions of one space, oldest first: each day (`YYYY-MM-DD`, the UTC day segments start on) with its
/// Parquet files in name order, each partition listed at one instant (see [`ArchiveFile`]).
pub fn days(root: &Path, space: &str) -> Result<Vec<(String, Vec<ArchiveFile>)>, Error> {
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
        let path = day.path();
        let failed =
            |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
        // The directory is opened, then listed through its handle: the names and the files are of one directory
        // even if a swap replaces the partition between the two.
        let dir = match fs::File::open(&path) {
            Ok(dir) => Arc::new(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failed(&e)),
        };
        let mut files = Vec::new();
        for entry in rustix::fs::Dir::read_from(&*dir).map_err(|e| failed(&e))? {
            let entry = entry.map_err(|e| failed(&e))?;
            let Ok(name) = entry.file_name().to_str() else { continue };
            if name.starts_with("part-") && name.ends_with(".parquet") {
                files.push(ArchiveFile { path: path.join(name), dir: dir.clone() });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        out.push((date, files));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Opens a Parquet file of the archive for reading.
pub(super) fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<fs::File>, Error> {
    let failed =
        |e: &dyn std::fmt::Display| Error::Archive { path: path.display().to_string(), message: e.to_string() };
    let file = fs::File::open(path).map_err(|e| failed(&e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| failed(&e))
}
