//! What a space's index is on disk: `CURRENT`, the manifest it names, and the open shard's snapshot.
//!
//! Under the space's directory, `CURRENT` names the manifest in force (`manifest-N.json`), which names the open
//! shard's snapshot (`open-N/`: hnsw_rs's dump plus `rows.bin` and `sensors.json`) and the sealed shards (`shard-N/`,
//! written once by `shard.rs`) with their tiers. A publication writes beside the old state and replaces `CURRENT`
//! atomically, then removes the previous manifest and snapshot; what no manifest names is removed when the job opens
//! the index. A `CURRENT` naming an hnsw_rs dump, from before shards, is read as a manifest with only an open shard.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use super::build::OpenShard;
use super::kernels::Tier;
use super::now_seconds;
use super::shard::Shard;
use crate::Error;
use crate::durable::{self, write_synced};

const SNAPSHOT_BASENAME: &str = "index";

/// The state of a space's index that `CURRENT` publishes.
#[derive(Serialize, Deserialize)]
pub(super) struct Manifest {
    /// The open shard's snapshot, unless the open shard was empty.
    pub(super) open: Option<String>,
    /// The number the next sealed shard's name takes.
    pub(super) next_shard: u64,
    /// The sealed shards, in order.
    pub(super) shards: Vec<ShardEntry>,
}

/// A sealed shard in a [`Manifest`].
#[derive(Serialize, Deserialize)]
pub(super) struct ShardEntry {
    /// Its directory.
    pub(super) name: String,
    /// The tier it opens into.
    pub(super) tier: Tier,
    /// See [`Shard::last_used`].
    pub(super) last_used: u64,
}

impl Manifest {
    /// Reads the manifest `CURRENT` names in `dir`, with that name; `None` when nothing is published.
    pub(super) fn read(dir: &Path) -> Result<Option<(String, Manifest)>, Error> {
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let current = match fs::read_to_string(dir.join("CURRENT")) {
            Ok(name) => name.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(format!("cannot read CURRENT: {e}"))),
        };
        let manifest = if current.ends_with(".json") {
            let bytes = fs::read(dir.join(&current)).map_err(|e| failed(format!("cannot read {current}: {e}")))?;
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("{current} is not a manifest: {e}")))?
        } else {
            // A single-graph snapshot from before shards: it becomes the open shard.
            Manifest { open: Some(current.clone()), next_shard: 1, shards: Vec::new() }
        };
        Ok(Some((current, manifest)))
    }

    /// The names in the space's directory it uses, with `current` (its own) and `CURRENT`.
    pub(super) fn names(&self, current: &str) -> HashSet<String> {
        (self.open.iter().cloned())
            .chain(self.shards.iter().map(|s| s.name.clone()))
            .chain([current.to_owned(), "CURRENT".to_owned()])
            .collect()
    }
}

/// Removes from `dir` whatever `keep` does not name: what a seal or a save cut short left behind.
pub(super) fn remove_unnamed(dir: &Path, keep: &HashSet<String>) -> Result<(), Error> {
    let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
    for entry in fs::read_dir(dir).map_err(|e| failed(e.to_string()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    Ok(())
}

/// Publishes in `dir` a manifest naming `open` and `sealed`, then removes the previous manifest and, when it is not
/// named again, the previous snapshot. The open shard's snapshot is written anew unless the shard is empty (no
/// snapshot) or `open_saved` says it is as the previous manifest's snapshot holds it (that one is named again).
pub(super) fn publish(
    dir: &Path,
    open: &OpenShard,
    open_saved: bool,
    next_shard: u64,
    sealed: &[Shard],
) -> Result<(), Error> {
    let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
    fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create directory: {e}")))?;
    let previous = fs::read_to_string(dir.join("CURRENT")).ok().map(|s| s.trim().to_owned());
    let sequence = previous.as_deref().and_then(sequence_of).unwrap_or(0) + 1;
    let previous_open = previous.as_deref().and_then(|p| {
        if p.ends_with(".json") {
            fs::read(dir.join(p)).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()).and_then(|m| m.open)
        } else {
            Some(p.to_owned())
        }
    });
    let open_name = if open.len() == 0 {
        None
    } else if open_saved && previous_open.is_some() {
        previous_open.clone()
    } else {
        let name = format!("open-{sequence:010}");
        write_open(&dir.join(&name), open).map_err(|e| failed(format!("cannot write snapshot: {e}")))?;
        Some(name)
    };
    let manifest = Manifest {
        open: open_name.clone(),
        next_shard,
        shards: sealed
            .iter()
            .map(|s| ShardEntry { name: s.name.clone(), tier: s.tier(), last_used: s.last_used() })
            .collect(),
    };
    let name = format!("manifest-{sequence:010}.json");
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    write_synced(&dir.join(&name), &body).map_err(|e| failed(format!("cannot write {name}: {e}")))?;
    durable::replace(&dir.join("CURRENT"), format!("{name}\n").as_bytes())
        .map_err(|e| failed(format!("cannot publish {name}: {e}")))?;
    for old in [previous, previous_open.filter(|p| Some(p) != open_name.as_ref())].into_iter().flatten() {
        if old != name {
            let path = dir.join(&old);
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    Ok(())
}

fn sequence_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    stem.rsplit('-').next()?.parse().ok()
}

/// hnsw_rs's dump of the open shard plus `rows.bin` (id, sensor number, start) and `sensors.json`.
fn write_open(target: &Path, open: &OpenShard) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(target);
    fs::create_dir_all(target)?;
    open.graph().file_dump(target, SNAPSHOT_BASENAME).map_err(std::io::Error::other)?;
    for file in ["graph", "data"] {
        fs::File::open(target.join(format!("{SNAPSHOT_BASENAME}.hnsw.{file}")))?.sync_all()?;
    }
    let (sensors, info) = open.described();
    let mut rows = Vec::with_capacity(info.len() * 20);
    for (id, (sensor, start)) in info {
        rows.extend_from_slice(&id.to_le_bytes());
        rows.extend_from_slice(&sensor.to_le_bytes());
        rows.extend_from_slice(&start.to_le_bytes());
    }
    write_synced(&target.join("rows.bin"), &rows)?;
    write_synced(&target.join("sensors.json"), &serde_json::to_vec(sensors)?)
}

/// Reads the open shard's snapshot in `target`; refuses one whose vectors are not `dim` long.
pub(super) fn load_open(target: &Path, dim: usize) -> Result<OpenShard, Error> {
    let failed = |message: String| Error::Index { path: target.display().to_string(), message };
    // A reloaded hnsw_rs graph borrows its loader for as long as it lives; the loader is a few bytes and an open
    // shard is loaded once per process, so it is leaked to give the graph a 'static lifetime.
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(target, SNAPSHOT_BASENAME)));
    let hnsw: Hnsw<'static, f32, DistDot> = io.load_hnsw().map_err(|e| failed(format!("cannot load snapshot: {e}")))?;
    if hnsw.get_nb_point() > 0 {
        let found = super::build::hnsw_points(&hnsw).next().map_or(dim, |p| p.get_v().len());
        if found != dim {
            return Err(failed(format!(
                "snapshot holds {found}-dimensional vectors but the model produces {dim}: it belongs to another model"
            )));
        }
    }
    let (mut sensors, mut rows) = (Vec::new(), Vec::new());
    if let Ok(listed) = fs::read(target.join("sensors.json")) {
        sensors = serde_json::from_slice(&listed).map_err(|e| failed(format!("sensors.json: {e}")))?;
        let bytes = fs::read(target.join("rows.bin")).map_err(|e| failed(format!("rows.bin: {e}")))?;
        rows = bytes
            .chunks_exact(20)
            .map(|row| {
                let id = u64::from_le_bytes(row[0..8].try_into().expect("8 bytes"));
                let sensor = u32::from_le_bytes(row[8..12].try_into().expect("4 bytes"));
                let start = i64::from_le_bytes(row[12..20].try_into().expect("8 bytes"));
                (id, sensor, start)
            })
            .collect();
    }
    Ok(OpenShard::reloaded(hnsw, sensors, rows, now_seconds()))
}
