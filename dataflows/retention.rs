//! Retention: which day partitions of the archive and the refinements dataset `chorus prune` deletes, with the
//! derived state rebuilt afterwards, and their deletion under the job lock.

use std::path::{Path, PathBuf};

use chorus_connectors::parquet;
use chorus_operators::index::space_dir;

use crate::Error;
use crate::config::Config;

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
    let _locks = crate::locks::lock_all(config)?;
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
        // The partition's lock (see compaction) lives beside it.
        if let (Some(parent), Some(name)) = (partition.dir.parent(), partition.dir.file_name()) {
            remove(&parent.join(format!(".{}.lock", name.to_string_lossy())), false)?;
        }
    }
    Ok(())
}

/// What `chorus prune --audio-older-than-days` writes in the files it rewrites: every row's audio gone, or all but
/// that of segments carrying a given label.
const AUDIO_PRUNED_ALL: &str = "all";
const AUDIO_PRUNED_KEEPING_LABELLED: &str = "all but labelled segments";

/// One day partition of the archive whose audio an audio prune removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioPartition {
    /// Tenant.
    pub space: String,
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Parquet files in it (rewritten as one).
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// Bytes of their audio column (compressed): about what the prune frees.
    pub audio_bytes: u64,
}

/// What `chorus prune --audio-older-than-days` rewrites: the archive's day partitions before `cutoff` still holding
/// audio, each rewritten whole without it (rows, embeddings, lineage and labels kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioPrunePlan {
    /// Partitions of days before this one lose their audio.
    pub cutoff: chrono::NaiveDate,
    /// Whether segments carrying a given label keep theirs.
    pub keep_labelled: bool,
    /// Those partitions.
    pub partitions: Vec<AudioPartition>,
}

impl AudioPrunePlan {
    /// Files, bytes and audio bytes the partitions hold.
    pub fn size(&self) -> (usize, u64, u64) {
        let p = &self.partitions;
        (p.iter().map(|p| p.files).sum(), p.iter().map(|p| p.bytes).sum(), p.iter().map(|p| p.audio_bytes).sum())
    }

    fn marker(&self) -> &'static str {
        if self.keep_labelled { AUDIO_PRUNED_KEEPING_LABELLED } else { AUDIO_PRUNED_ALL }
    }
}

/// Plans the removal of the audio of every segment of a day more than `days` days before `today` (UTC). A file an
/// earlier prune rewrote the same way (or keeping nothing) is left alone.
pub fn plan_audio_prune(
    config: &Config,
    days: u32,
    today: chrono::NaiveDate,
    keep_labelled: bool,
) -> Result<AudioPrunePlan, Error> {
    let cutoff = today.checked_sub_days(chrono::Days::new(u64::from(days))).ok_or_else(|| {
        Error::Usage(format!("--audio-older-than-days {days} reaches before the calendar's first day"))
    })?;
    let mut plan = AudioPrunePlan { cutoff, keep_labelled, partitions: Vec::new() };
    let root = &config.archive.dir;
    for space in parquet::spaces(root)? {
        for (date, files) in parquet::days(root, &space)? {
            if !chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok_and(|d| d < cutoff) {
                continue;
            }
            let (mut bytes, mut audio_bytes, mut prunable) = (0, 0, false);
            for file in &files {
                bytes += std::fs::metadata(file.path()).map(|m| m.len()).unwrap_or(0);
                let (audio, rows, pruned) = parquet::file_audio(file)?;
                audio_bytes += audio;
                // A column of nulls is a few bytes a row group; a pruned file keeps at most labelled segments' audio.
                let done = pruned.is_some_and(|p| p == plan.marker() || p == AUDIO_PRUNED_ALL);
                prunable |= !done && audio > 16 * rows.max(1);
            }
            if prunable {
                let files = files.len();
                plan.partitions.push(AudioPartition { space: space.clone(), date, files, bytes, audio_bytes });
            }
        }
    }
    Ok(plan)
}

/// Rewrites what `plan` lists without its audio, one partition at a time, each swapped in whole as compaction does;
/// `labelled` holds the segments whose audio stays (with `--keep-labelled`). Takes the archive's job lock first:
/// refused under a running job. `each` hears of every partition rewritten.
pub fn apply_audio_prune(
    config: &Config,
    plan: &AudioPrunePlan,
    labelled: &std::collections::HashSet<String>,
    each: &mut dyn FnMut(&AudioPartition, &parquet::Merged),
) -> Result<(), Error> {
    let _locks = crate::locks::lock_all(config)?;
    let keep = |id: &str| plan.keep_labelled && labelled.contains(id);
    let prune = parquet::AudioPrune { keep: &keep, marker: plan.marker() };
    for partition in &plan.partitions {
        let merged = parquet::prune_audio(
            &config.archive.dir,
            &partition.space,
            &partition.date,
            &config.archive.compaction,
            &prune,
        )?;
        each(partition, &merged);
    }
    Ok(())
}
