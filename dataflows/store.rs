//! Opening the indices: each space's HNSW snapshot, caught up with the segments the archive holds beyond it.
//!
//! The archive is the durable record; a snapshot only saves rebuilding the graph. A segment archived after the last
//! snapshot (the job stopped before writing one) is inserted again from its archived embedding, so after any stop
//! the index holds exactly the archived segments.

use std::collections::HashSet;
use std::time::Instant;

use chorus_connectors::parquet;
use chorus_operators::index::{Indices, PointInfo, Registry, SpaceIndex, now_seconds, space_dir};
use chorus_operators::metrics::Metrics;
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

/// Who opens an index: the job, which owns the files of its index and archive, or a reader beside it (`chorus
/// query`, `chorus serve`), which must never change a file the job may be using.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The job: an index that cannot be opened (a crash, a reader of an older release) is rebuilt from the archive,
    /// and a damaged archive file is set aside ([`parquet::set_aside`]).
    Owner,
    /// A reader: the index is opened read-only (see [`SpaceIndex::open_read_only`]) and a damaged archive file is
    /// skipped.
    Reader,
}

/// An index opened and caught up from the archive.
pub struct Opened {
    /// The index.
    pub index: SpaceIndex,
    /// Archived segments it lacked, inserted now.
    pub caught_up: usize,
    /// Archive files that could not be read (set aside by an owner, skipped by a reader).
    pub damaged: usize,
}

/// Opens `space`'s index and inserts the archived segments it lacks.
pub fn open_space(config: &Config, space: &str, access: Access) -> Result<Opened, Error> {
    let started = Instant::now();
    let dir = space_dir(&config.index.dir, space);
    let mut index = match access {
        Access::Reader => SpaceIndex::open_read_only(&dir, &config.index, config.model.dim)?,
        Access::Owner => match SpaceIndex::open(&dir, &config.index, config.model.dim) {
            Ok(index) => index,
            Err(error) => {
                // The archive is the durable record; the index only saves rebuilding it.
                tracing::warn!(space, %error, "The index cannot be opened; it is rebuilt from the archive.");
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    Error::Job(format!(
                        "{}: cannot remove the index that cannot be opened ({error}): {e}",
                        dir.display()
                    ))
                })?;
                SpaceIndex::open(&dir, &config.index, config.model.dim)?
            }
        },
    };
    let from_snapshot = index.len();
    let mut caught_up = 0;
    let mut damaged = 0;
    let mut archived = HashSet::new();
    // Looked up once, not read from their shard's files for each id.
    let archive_tier = index.archive_tier_ids();
    let mut pending: Vec<(SegmentId, PointInfo, Vec<f32>)> = Vec::new();
    let now = now_seconds();
    let mut last_progress = Instant::now();
    let flush = |index: &mut SpaceIndex, pending: &mut Vec<(SegmentId, PointInfo, Vec<f32>)>| {
        let batch: Vec<_> = pending.iter().map(|(id, info, v)| (*id, info.clone(), v.as_slice())).collect();
        let inserted = index.insert_many(&batch, now);
        pending.clear();
        inserted
    };
    for path in parquet::files(&config.archive.dir, space)? {
        // A file is taken whole or not at all: a damaged one may fail after some of its rows.
        let mut rows = Vec::new();
        if let Err(error) = parquet::read_file(&path, true, &mut |row| rows.push(row)) {
            damaged += 1;
            match access {
                Access::Owner => {
                    let aside = parquet::set_aside(&path)?;
                    tracing::error!(space, %error, aside = %aside.display(), "An archive file cannot be read: it is set aside and the job goes on.");
                }
                Access::Reader => {
                    tracing::error!(space, %error, "An archive file cannot be read: it is skipped.");
                }
            }
            continue;
        }
        for row in rows {
            archived.insert(row.id.0);
            let info = PointInfo { sensor: row.sensor.clone(), start_micros: row.start_micros };
            if archive_tier.contains(&row.id.0) || index.contains_outside_archive_tier(row.id) {
                index.describe(row.id, &info);
                continue;
            }
            if row.model != config.model.name {
                return Err(Error::Job(format!(
                    "space '{space}' holds segments of model '{}' but the config runs '{}': embeddings of different \
                     models cannot share an index; use another space or archive directory",
                    row.model, config.model.name
                )));
            }
            pending.push((row.id, info, row.embedding.expect("embeddings were asked for")));
            if pending.len() >= CATCH_UP_BATCH {
                caught_up += flush(&mut index, &mut pending)?;
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
        }
    }
    if !pending.is_empty() {
        caught_up += flush(&mut index, &mut pending)?;
    }
    index.reconcile(&archived, &archive_tier);
    drop(archive_tier);
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
    Ok(Opened { index, caught_up, damaged })
}

/// The indices of the spaces worker `worker` of `peers` owns, opened, caught up and entered in `registry`; damaged
/// archive files are set aside and counted in `metrics`.
pub fn open_indices(
    config: &Config,
    worker: usize,
    peers: usize,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<Indices, Error> {
    let mut indices = Indices::new(config.index.clone(), config.model.dim, registry.clone());
    for space in known_spaces(config)? {
        if owns(&space, worker, peers) {
            let opened = open_space(config, &space, Access::Owner)?;
            metrics.archive_damaged.with_label_values(&[space.as_str()]).inc_by(opened.damaged as u64);
            indices.insert(space, opened.index);
        }
    }
    Ok(indices)
}

/// Opens `spaces` read-only (caught up from the archive, in memory) into a registry of their own, for queries beside
/// or without a running job; damaged archive files are skipped and counted in `metrics` when given.
pub fn open_registry(config: &Config, spaces: &[String], metrics: Option<&Metrics>) -> Result<Registry, Error> {
    let registry = Registry::default();
    let mut indices = Indices::new(config.index.clone(), config.model.dim, registry.clone());
    for space in spaces {
        let opened = open_space(config, space, Access::Reader)?;
        if let Some(metrics) = metrics {
            metrics.archive_damaged.with_label_values(&[space.as_str()]).inc_by(opened.damaged as u64);
        }
        indices.insert(space.clone(), opened.index);
    }
    Ok(registry)
}
