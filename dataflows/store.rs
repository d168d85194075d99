//! Opening the indices: each space's HNSW snapshot, caught up with the segments the archive holds beyond it.
//!
//! The archive is the durable record; a snapshot only saves rebuilding the graph. A segment archived after the last
//! snapshot (the job stopped before writing one) is inserted again from its archived embedding, so after any stop
//! the index holds exactly the archived segments.

use std::collections::HashSet;
use std::time::Instant;

use chorus_connectors::parquet;
use chorus_operators::index::{Indices, SpaceIndex, space_dir};
use chorus_operators::record::route;

use crate::Error;
use crate::config::Config;

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
    parquet::read_space(&config.archive.dir, space, true, |row| {
        archived.insert(row.id.0);
        if failure.is_some() || index.contains(row.id) {
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
        let embedding = row.embedding.expect("embeddings were asked for");
        match index.insert(row.id, &embedding) {
            Ok(_) => caught_up += 1,
            Err(e) => failure = Some(e.into()),
        }
    })?;
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

/// The indices of the spaces worker `worker` of `peers` owns, opened and caught up.
pub fn open_indices(config: &Config, worker: usize, peers: usize) -> Result<Indices, Error> {
    let mut indices = Indices::new(config.index.clone(), config.model.dim);
    for space in known_spaces(config)? {
        if owns(&space, worker, peers) {
            let (index, _) = open_space(config, &space)?;
            indices.insert(space, index);
        }
    }
    Ok(indices)
}
