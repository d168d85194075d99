//! Reading and pruning the Parquet archive from the command line: `chorus archive` and `chorus prune`.
//!
//! A query reads only what its filter needs. Day partitions outside the time range are never opened; within a file,
//! row groups whose `sensor` or `start_time` statistics rule the filter out are never decoded (the writer sorts each
//! file by sensor and time, in row groups of 8 192 rows); the embedding and audio columns are never read. Labels and clusters
//! come from the refinements dataset: the latest row per segment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chorus_connectors::parquet::{self, LatestRefinement, ScanStats};
use chorus_operators::index::{Filter, space_dir};
use chorus_operators::record::{SegmentId, rfc3339};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::Error;
use crate::config::Config;

/// What `chorus archive` looks for.
#[derive(Clone, Debug, Default)]
pub struct ArchiveQuery {
    /// Only this space (none: every space).
    pub space: Option<String>,
    /// Sensors and time range.
    pub filter: Filter,
    /// Only segments whose latest refinement carries this label.
    pub label: Option<String>,
}

/// One archived segment as `chorus archive` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArchiveRow {
    /// Segment id, 16 hex digits.
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// First sample, RFC 3339 (UTC).
    pub start_time: String,
    /// Just past the last sample, RFC 3339 (UTC).
    pub end_time: String,
    /// Fraction of the window that was recorded audio.
    pub coverage: f32,
    /// Model that embedded it.
    pub model: String,
    /// Label the refinement gives it, if any.
    pub label: Option<String>,
    /// The label's share of the label mass.
    pub label_score: Option<f32>,
    /// Cluster: the smallest segment id of its component.
    pub cluster: Option<String>,
    #[serde(skip)]
    start_micros: i64,
}

/// Runs `query` over the archive; returns the rows in order of space, start time and sensor, with what the scan
/// read and skipped. `progress` shows a bar over the files on stderr.
pub fn query(config: &Config, query: &ArchiveQuery, progress: bool) -> Result<(Vec<ArchiveRow>, ScanStats), Error> {
    let root = &config.archive.dir;
    let spaces = match &query.space {
        Some(space) => {
            let known = parquet::spaces(root)?;
            if !known.contains(space) {
                return Err(Error::NotFound(format!(
                    "space '{space}' is not in the archive {} (it holds: {})",
                    root.display(),
                    if known.is_empty() { "nothing yet".to_owned() } else { known.join(", ") }
                )));
            }
            vec![space.clone()]
        }
        None => parquet::spaces(root)?,
    };
    let mut stats = ScanStats::default();
    let mut plan: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for space in &spaces {
        plan.push((space.clone(), parquet::scan_files(root, space, &query.filter, &mut stats)?));
    }
    let bar = if progress {
        let bar = ProgressBar::new(plan.iter().map(|(_, f)| f.len() as u64).sum());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} files, {msg} rows ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix("chorus archive");
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut rows = Vec::new();
    for (space, files) in plan {
        let refinements: HashMap<SegmentId, LatestRefinement> =
            parquet::latest_refinements(&config.refine.dir, &space)?;
        for path in files {
            parquet::scan_file(&path, &query.filter, false, &mut stats, &mut |segment| {
                let refinement = refinements.get(&segment.id);
                let label = refinement.and_then(|r| r.label.clone());
                if let Some(wanted) = &query.label
                    && label.as_ref().is_none_or(|(l, _)| l != wanted)
                {
                    return;
                }
                rows.push(ArchiveRow {
                    segment_id: segment.id.to_string(),
                    space: segment.space,
                    sensor: segment.sensor,
                    start_time: rfc3339(segment.start_micros * 1_000),
                    end_time: rfc3339(segment.end_micros * 1_000),
                    coverage: segment.coverage,
                    model: segment.model,
                    label_score: label.as_ref().map(|(_, s)| *s),
                    label: label.map(|(l, _)| l),
                    cluster: refinement.and_then(|r| r.cluster).map(|c| c.to_string()),
                    start_micros: segment.start_micros,
                });
            })?;
            bar.inc(1);
            bar.set_message(rows.len().to_string());
        }
    }
    bar.finish_and_clear();
    rows.sort_by(|a, b| (&a.space, a.start_micros, &a.sensor).cmp(&(&b.space, b.start_micros, &b.sensor)));
    Ok((rows, stats))
}

/// How `chorus archive` prints rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// A JSON array of objects.
    Json,
}

const COLUMNS: [&str; 9] =
    ["segment_id", "space", "sensor", "start_time", "end_time", "coverage", "label", "label_score", "cluster"];

fn fields(row: &ArchiveRow) -> [String; 9] {
    [
        row.segment_id.clone(),
        row.space.clone(),
        row.sensor.clone(),
        row.start_time.clone(),
        row.end_time.clone(),
        format!("{:.3}", row.coverage),
        row.label.clone().unwrap_or_default(),
        row.label_score.map(|s| format!("{s:.3}")).unwrap_or_default(),
        row.cluster.clone().unwrap_or_default(),
    ]
}

/// Writes `rows` to `out` in `format`.
pub fn write(rows: &[ArchiveRow], format: Format, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)
        }
        Format::Csv => {
            let quote = |f: &str| {
                // A cell a spreadsheet would run as a formula (labels come from people) is kept as text.
                let f = if f.starts_with(['=', '+', '-', '@']) { format!("'{f}") } else { f.to_owned() };
                if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f }
            };
            writeln!(out, "{}", COLUMNS.join(","))?;
            for row in rows {
                writeln!(out, "{}", fields(row).iter().map(|f| quote(f)).collect::<Vec<_>>().join(","))?;
            }
            Ok(())
        }
        Format::Table => {
            let cells: Vec<[String; 9]> = rows.iter().map(fields).collect();
            let widths: Vec<usize> = (0..COLUMNS.len())
                .map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).max(COLUMNS[c].len()))
                .collect();
            let line = |values: &[&str]| {
                let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}", w = *w)).collect();
                padded.join("  ").trim_end().to_owned()
            };
            writeln!(out, "{}", line(&COLUMNS))?;
            for row in &cells {
                writeln!(out, "{}", line(&row.iter().map(String::as_str).collect::<Vec<_>>()))?;
            }
            Ok(())
        }
    }
}

/// One day partition retention would delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// `archive` (segments) or `refinements`.
    pub dataset: &'static str,
    /// Tenant.
    pub space: String,
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Parquet files in it.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
}

/// What `chorus prune` deletes: the day partitions before `cutoff`, and the derived state rebuilt afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    /// Partitions of days before this one go.
    pub cutoff: chrono::NaiveDate,
    /// Those partitions, archive first.
    pub partitions: Vec<Partition>,
    /// Index snapshots of the spaces that lose segments: removed, so the next start rebuilds them from what the
    /// archive still holds (the index holds exactly the archived segments).
    pub snapshots: Vec<PathBuf>,
    /// Saved kNN graphs of the refinement: removed, so the next start rebuilds the graph from the index.
    pub graphs: Vec<PathBuf>,
}

impl PrunePlan {
    /// Files and bytes the partitions hold.
    pub fn size(&self) -> (usize, u64) {
        (self.partitions.iter().map(|p| p.files).sum(), self.partitions.iter().map(|p| p.bytes).sum())
    }
}

/// Plans the deletion of every day partition older than `days` days before `today` (UTC): the archive's and the
/// refinements dataset's.
pub fn plan_prune(config: &Config, days: u32, today: chrono::NaiveDate) -> Result<PrunePlan, Error> {
    let cutoff = today
        .checked_sub_days(chrono::Days::new(u64::from(days)))
        .ok_or_else(|| Error::Usage(format!("--older-than-days {days} reaches before the calendar's first day")))?;
    let mut partitions = Vec::new();
    let mut spaces = Vec::new();
    for (dataset, root) in [("archive", &config.archive.dir), ("refinements", &config.refine.dir)] {
        for space in parquet::spaces(root)? {
            for (date, files) in parquet::days(root, &space)? {
                let old = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok_and(|d| d < cutoff);
                if !old {
                    continue;
                }
                let bytes = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
                let dir = parquet::partition_dir(root, &space, &date);
                partitions.push(Partition { dataset, space: space.clone(), date, dir, files: files.len(), bytes });
                if dataset == "archive" && !spaces.contains(&space) {
                    spaces.push(space.clone());
                }
            }
        }
    }
    let snapshots = spaces.iter().map(|s| space_dir(&config.index.dir, s)).filter(|d| d.exists()).collect();
    let graphs = if spaces.is_empty() { Vec::new() } else { saved_graphs(&config.state_dir) };
    Ok(PrunePlan { cutoff, partitions, snapshots, graphs })
}

fn saved_graphs(state_dir: &Path) -> Vec<PathBuf> {
    let mut graphs: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("refine-graph-") && n.ends_with(".bin"))
        })
        .collect();
    graphs.sort();
    graphs
}

/// Deletes what `plan` lists: the derived state first (so that an interrupted prune leaves at worst an index to
/// rebuild, never a snapshot naming segments the archive lost), then the partitions. Takes the archive's job lock
/// first: pruning under a running job is refused.
pub fn apply_prune(config: &Config, plan: &PrunePlan) -> Result<(), Error> {
    let _locks = crate::job::lock_all(config)?;
    let remove = |path: &Path, dir: bool| {
        let removed = if dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Job(format!("{}: cannot delete: {e}", path.display())))
            }
            _ => Ok(()),
        }
    };
    for dir in &plan.snapshots {
        remove(dir, true)?;
    }
    for graph in &plan.graphs {
        remove(graph, false)?;
    }
    for partition in &plan.partitions {
        remove(&partition.dir, true)?;
    }
    Ok(())
}

/// Prints `plan` for a person to check.
pub fn print_plan(plan: &PrunePlan, days: u32, out: &mut impl std::io::Write) -> std::io::Result<()> {
    if plan.partitions.is_empty() {
        return writeln!(
            out,
            "Nothing to prune: no partition holds segments from before {} ({days} days).",
            plan.cutoff
        );
    }
    writeln!(out, "Day partitions from before {} (older than {days} days):", plan.cutoff)?;
    let space_w = plan.partitions.iter().map(|p| p.space.len()).max().unwrap_or(0);
    for p in &plan.partitions {
        writeln!(
            out,
            "  {:<11}  space={:<space_w$}  date={}  {:>4} file(s)  {:>10}",
            p.dataset,
            p.space,
            p.date,
            p.files,
            human_bytes(p.bytes)
        )?;
    }
    let (files, bytes) = plan.size();
    writeln!(out, "In all: {} partition(s), {files} file(s), {}.", plan.partitions.len(), human_bytes(bytes))?;
    for snapshot in &plan.snapshots {
        writeln!(out, "Then: index snapshot {} (rebuilt from the archive at the next start).", snapshot.display())?;
    }
    for graph in &plan.graphs {
        writeln!(out, "Then: kNN graph {} (rebuilt from the index at the next start).", graph.display())?;
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Where to look for a segment: its space if known, and its sensor and start time if known (then the lookup reads
/// one row group).
#[derive(Clone, Debug, Default)]
pub struct Whereabouts {
    /// The space (none: every space).
    pub space: Option<String>,
    /// The sensor.
    pub sensor: Option<String>,
    /// The start time, µs since the epoch.
    pub start_micros: Option<i64>,
}

/// The audio the archive keeps with segment `id`, decoded: its space and the samples at the model's rate.
pub fn segment_audio(
    config: &Config,
    id: SegmentId,
    whereabouts: &Whereabouts,
) -> Result<(String, chorus_connectors::wav::Audio), Error> {
    let (space, wav) = segment_wav(config, id, whereabouts)?;
    let audio = chorus_connectors::wav::decode(&wav, &Default::default()).map_err(|r| {
        Error::Job(format!("{}: the audio of segment {id} is damaged: {}", config.archive.dir.display(), r.reason))
    })?;
    Ok((space, audio))
}

/// The audio the archive keeps with segment `id`, as the WAV file stored: its space and the file.
pub fn segment_wav(config: &Config, id: SegmentId, whereabouts: &Whereabouts) -> Result<(String, Vec<u8>), Error> {
    let root = &config.archive.dir;
    let spaces = match &whereabouts.space {
        Some(space) => vec![space.clone()],
        None => parquet::spaces(root)?,
    };
    let filter = Filter {
        sensors: whereabouts.sensor.iter().cloned().collect(),
        from_micros: whereabouts.start_micros,
        to_micros: whereabouts.start_micros.map(|t| t + 1),
    };
    for space in spaces {
        match parquet::segment_audio(root, &space, id, &filter)? {
            None => continue,
            Some(None) => {
                return Err(Error::NotFound(format!(
                    "segment {id} was archived without its audio (written with archive.audio off, or before the archive kept audio)"
                )));
            }
            Some(Some(wav)) => return Ok((space, wav)),
        }
    }
    Err(Error::NotFound(format!("segment {id} is not in the archive {}", root.display())))
}
