//! Listing the archive: the segments a filter admits, with their labels and clusters, reading only what the filter
//! needs.
//!
//! Day partitions outside the time range are never opened; within a file, row groups whose `sensor` or `start_time`
//! statistics rule the filter out are never decoded (the writer sorts each file by sensor and time, in row groups of
//! 8 192 rows); the embedding and audio columns are never read. Labels and clusters come from the refinements
//! dataset: the latest row per segment.

use std::collections::HashMap;

use chorus_connectors::parquet::{self, LatestRefinement, ScanStats};
use chorus_operators::index::Filter;
use chorus_operators::record::SegmentId;
use serde::Serialize;

use super::SegmentView;
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

/// One archived segment as `chorus archive` prints it: the segment's view, what the archive adds, and the
/// refinement's label and cluster (null when there is none: the columns are fixed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArchiveRow {
    /// The segment.
    #[serde(flatten)]
    pub segment: SegmentView,
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
}

/// How far a listing has come, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The files to read are known.
    Planned {
        /// How many.
        files: u64,
    },
    /// One more file was read.
    Read {
        /// Rows found so far.
        rows: usize,
    },
    /// Every file was read.
    Done,
}

/// Runs `query` over the archive; returns the rows in order of space, start time and sensor, with what the scan
/// read and skipped. `progress` hears of each file read.
pub fn list(
    config: &Config,
    query: &ArchiveQuery,
    progress: &mut dyn FnMut(Step),
) -> Result<(Vec<ArchiveRow>, ScanStats), Error> {
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
    let mut plan: Vec<(String, Vec<parquet::ArchiveFile>)> = Vec::new();
    for space in &spaces {
        plan.push((space.clone(), parquet::scan_files(root, space, &query.filter, &mut stats)?));
    }
    progress(Step::Planned { files: plan.iter().map(|(_, f)| f.len() as u64).sum() });
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
                    segment: SegmentView::new(
                        segment.id,
                        segment.space,
                        segment.sensor,
                        segment.start_micros,
                        segment.end_micros,
                    ),
                    coverage: segment.coverage,
                    model: segment.model,
                    label_score: label.as_ref().map(|(_, s)| *s),
                    label: label.map(|(l, _)| l),
                    cluster: refinement.and_then(|r| r.cluster).map(|c| c.to_string()),
                });
            })?;
            progress(Step::Read { rows: rows.len() });
        }
    }
    progress(Step::Done);
    rows.sort_by(|a, b| {
        let (a, b) = (&a.segment, &b.segment);
        (&a.space, a.start_micros, &a.sensor).cmp(&(&b.space, b.start_micros, &b.sensor))
    });
    Ok((rows, stats))
}
