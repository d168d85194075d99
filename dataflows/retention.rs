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
    }
    Ok(())
}
