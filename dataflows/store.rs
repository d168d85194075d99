//! Opening the indices: each space's HNSW snapshot, caught up with the segments the archive holds beyond it.
//!
//! The archive is the durable record; a snapshot only saves rebuilding the graph. A segment archived after the last
//! snapshot (the job stopped before writing one) is inserted again from its archived embedding, so after any stop
//! the index holds exactly the archived segments.

use std::collections::HashSet;
use std::time::Instant;

use chorus_connectors::parquet;
use chorus_operators::Error as OperatorError;
use chorus_operators::index::{ColdTier, Filter, Indices, PointInfo, Registry, SpaceIndex, now_seconds, space_dir};
use chorus_operators::record::{SegmentId, route};

use crate::Error;
use crate::config::Config;

/// Archived segments inserted at once (in parallel) when an index catches up.
const CATCH_UP_BATCH: usize = 1024;
/// How often a long catch-up reports how far it has come.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether worker `worker` of `peers` owns `space` (the index operator routes segments the same way).
pub fn owns(space: &str, worker: usize, peers: usize) -> bool {
    (route(space) % peers as u64) as usize == worker
}

/// Every space with an archive partition or an index snapshot.
pub fn known_spaces(config: &Config) -> Result<Vec<String>, Error> {
    let mut spaces: HashSet<String> = parquet::spaces(&config.archive.dir)?.into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(&config.index.dir) {
        for entry in entries.flatten() {
            if let Some(space) = entry.file_name().to_str().and_then(|n| n.strip_prefix("space=")) {
                spaces.insert(space.to_owned());
            }
        }
    }
    let mut spaces: Vec<String> = spaces.into_iter().collect();
    spaces.sort();
    Ok(spaces)
}

/// Opens `space`'s index and inserts the archived segments it lacks; returns it with the number caught up.
pub fn open_space(config: &Config, space: &str) -> Result<(SpaceIndex, usize), Error> {
    let started = Instant::now();
    let mut index = SpaceIndex::open(&space_dir(&config.index.dir, space), &config.index, config.model.dim)?;
    let from_snapshot = index.len();
    let mut caught_up = 0;
    let mut failure = None;
    let mut archived = HashSet::new();
    let mut pending: Vec<(SegmentId, PointInfo, Vec<f32>)> = Vec::new();
    let now = now_seconds();
    let mut last_progress = Instant::now();
    let flush = |index: &mut SpaceIndex, pending: &mut Vec<(SegmentId, PointInfo, Vec<f32>)>| {
        let batch: Vec<_> = pending.iter().map(|(id, info, v)| (*id, info.clone(), v.as_slice())).collect();
        let inserted = index.insert_many(&batch, now);
        pending.clear();
        inserted
    };
    parquet::read_space(&config.archive.dir, space, true, |row| {
        archived.insert(row.id.0);
        let info = PointInfo { sensor: row.sensor.clone(), start_micros: row.start_micros };
        if failure.is_some() {
            return;
        }
        if index.contains(row.id) {
            index.describe(row.id, &info);
            return;
        }
        if row.model != config.model.name {
            failure = Some(Error::Job(format!(
                "space '{space}' holds segments of model '{}' but the config runs '{}': embeddings of different \
                 models cannot share an index; use another space or archive directory",
                row.model, config.model.name
            )));
            return;
        }
        pending.push((row.id, info, row.embedding.expect("embeddings were asked for")));
        if pending.len() >= CATCH_UP_BATCH {
            match flush(&mut index, &mut pending) {
                Ok(n) => caught_up += n,
                Err(e) => failure = Some(e.into()),
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                tracing::info!(
                    space,
                    caught_up,
                    seconds = started.elapsed().as_secs(),
                    "Catching the index up from the archive..."
                );
            }
        }
    })?;
    if failure.is_none() && !pending.is_empty() {
        match flush(&mut index, &mut pending) {
            Ok(n) => caught_up += n,
            Err(e) => failure = Some(e.into()),
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    index.reconcile(&archived);
    if index.unarchived() > 0 {
        tracing::info!(
            space,
            unarchived = index.unarchived(),
            "Snapshot holds segments the archive lacks; a replay re-archives them."
        );
    }
    let seconds = started.elapsed().as_secs_f32();
    if caught_up > 0 {
        tracing::info!(space, from_snapshot, caught_up, seconds, "Index opened and caught up from the archive.");
    } else {
        tracing::debug!(space, from_snapshot, seconds, "Index opened.");
    }
    Ok((index, caught_up))
}

/// The indices of the spaces worker `worker` of `peers` owns, opened, caught up and entered in `registry`.
pub fn open_indices(config: &Config, worker: usize, peers: usize, registry: &Registry) -> Result<Indices, Error> {
    let mut indices = Indices::new(config.index.clone(), config.model.dim, registry.clone());
    for space in known_spaces(config)? {
        if owns(&space, worker, peers) {
            let (index, _) = open_space(config, &space)?;
            indices.insert(space, index);
        }
    }
    Ok(indices)
}

/// Opens `spaces` (caught up from the archive) into a registry of their own, for queries outside a running job.
pub fn open_registry(config: &Config, spaces: &[String]) -> Result<Registry, Error> {
    let registry = Registry::default();
    let mut indices = Indices::new(config.index.clone(), config.model.dim, registry.clone());
    for space in spaces {
        let (index, _) = open_space(config, space)?;
        indices.insert(space.clone(), index);
    }
    Ok(registry)
}

/// A space's Parquet archive as the index's coldest tier: a scan of the days the filter's time range touches, of the
/// row groups whose statistics admit it, and of the rows that pass it.
pub struct ArchiveScan<'a> {
    /// The archive root.
    pub dir: &'a std::path::Path,
    /// The space.
    pub space: &'a str,
}

impl ColdTier for ArchiveScan<'_> {
    fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(u64, &[f32])) -> Result<(), OperatorError> {
        let mut stats = parquet::ScanStats::default();
        for path in parquet::scan_files(self.dir, self.space, filter, &mut stats).map_err(archive_error)? {
            parquet::scan_file(&path, filter, true, &mut stats, &mut |row| {
                if let Some(embedding) = &row.embedding {
                    visit(row.id.0, embedding);
                }
            })
            .map_err(archive_error)?;
        }
        Ok(())
    }
}

fn archive_error(error: chorus_connectors::Error) -> OperatorError {
    OperatorError::Index { path: "archive".into(), message: error.to_string() }
}
