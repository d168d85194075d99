//! One space's index: an open HNSW shard taking inserts and sealed shards in memory tiers, with one manifest.
//!
//! New segments go to the open shard (an hnsw_rs graph). When it holds `shard_max_points` or has been open for
//! `shard_max_age`, it is sealed: its graph is frozen into a [`Shard`] on disk and a fresh open shard begins. Sealed
//! shards move between tiers by age and by the memory budget, and back up when queries keep drawing on them (see
//! [`SpaceIndex::maintain`]). A query fans out over the shards (in parallel when there are enough points to pay for
//! it) and merges by distance; shards in the archive tier are answered by a scan of the Parquet archive.
//!
//! On disk, under the space's directory: `CURRENT` names the manifest in force (`manifest-N.json`), which names the
//! open shard's snapshot (`open-N/`, hnsw_rs's dump plus `rows.bin`) and the sealed shards (`shard-N/`) with their
//! tiers. Everything is written beside the old state and published by replacing `CURRENT` atomically; what no
//! manifest names is removed when the index is opened.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hnsw_rs::hnsw::Point;
use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::kernels::Tier;
use super::shard::{Rows, Shard};
use super::{ColdTier, Filter, IndexParams, unit};
use crate::Error;
use crate::durable::{self, write_synced};
use crate::record::SegmentId;

/// hnsw_rs only dumps graphs built with its maximum layer count.
const LAYERS: usize = 16;
/// Shrinks normalised vectors a hair so rounding can never push a dot product above 1 (hnsw_rs asserts on it).
pub(super) const SHRINK: f32 = 1.0 - 4e-6;
const SNAPSHOT_BASENAME: &str = "index";
/// The shard number of the open shard in [`SpaceIndex`]'s id map.
const OPEN: u32 = u32::MAX;
/// Times a reader reads an index that keeps changing under it before it gives up.
const READ_ATTEMPTS: u32 = 10;
/// Seconds between attempts to seal a full open shard after one failed.
const SEAL_RETRY_SECONDS: u64 = 60;
/// Below this many points in memory, one thread searches every shard.
const PARALLEL_POINTS: usize = 20_000;

/// Where and when a segment was recorded, for filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointInfo {
    /// Sensor id.
    pub sensor: String,
    /// Start time, in microseconds since the epoch.
    pub start_micros: i64,
}

/// The shard taking inserts.
struct OpenShard {
    hnsw: Hnsw<'static, f32, DistDot>,
    /// Sensor number and start time per id.
    info: HashMap<u64, (u32, i64)>,
    sensors: Vec<String>,
    sensor_numbers: HashMap<String, u32>,
    /// Points whose sensor and time a snapshot from before shards did not record.
    undescribed: HashSet<u64>,
    /// When its first point arrived (seconds since the epoch).
    opened_at: Option<u64>,
}

impl OpenShard {
    fn new(params: &IndexParams) -> OpenShard {
        OpenShard {
            hnsw: Hnsw::new(params.m, params.shard_max_points.max(1000), LAYERS, params.ef_construction, DistDot),
            info: HashMap::new(),
            sensors: Vec::new(),
            sensor_numbers: HashMap::new(),
            undescribed: HashSet::new(),
            opened_at: None,
        }
    }

    fn describe(&mut self, id: u64, info: &PointInfo) {
        let next = self.sensors.len() as u32;
        let number = *self.sensor_numbers.entry(info.sensor.clone()).or_insert(next);
        if number == next {
            self.sensors.push(info.sensor.clone());
        }
        self.info.insert(id, (number, info.start_micros));
    }

    fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    fn admits(&self, filter: &Filter, id: u64) -> bool {
        match self.info.get(&id) {
            Some((sensor, start)) => filter.admits(&self.sensors[*sensor as usize], *start),
            None => filter.is_empty(),
        }
    }

    fn bytes(&self, dim: usize) -> usize {
        // Vector, links (about m on upper layers and 2m on layer 0, with their distances) and bookkeeping per point.
        let links = self.hnsw.get_max_nb_connection() as usize * 2 * 16;
        self.len() * (dim * 4 + links + 96)
    }

    fn search(&self, query: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(u64, f32)> {
        if self.len() == 0 {
            return Vec::new();
        }
        let shrunk: Vec<f32> = query.iter().map(|x| x * SHRINK).collect();
        let found = if filter.is_empty() {
            self.hnsw.search(&shrunk, k, ef.max(k))
        } else {
            let accept = |id: &usize| self.admits(filter, *id as u64);
            self.hnsw.search_filter(&shrunk, k, ef.max(k), Some(&accept))
        };
        // Undo the shrink so that a vector's distance to itself reads as 0.
        found.into_iter().map(|n| (n.d_id as u64, (1.0 - (1.0 - n.distance) / (SHRINK * SHRINK)).max(0.0))).collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    open: Option<String>,
    next_shard: u64,
    shards: Vec<ShardEntry>,
}

#[derive(Serialize, Deserialize)]
struct ShardEntry {
    name: String,
    tier: Tier,
    last_used: u64,
}

/// Memory held by one tier of a space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierUsage {
    /// Shards in it (the open shard counts as f32).
    pub shards: usize,
    /// Points in it.
    pub points: usize,
    /// Bytes held in memory.
    pub bytes: usize,
}

impl TierUsage {
    /// Bytes per point, or 0 when empty.
    pub fn bytes_per_point(&self) -> f64 {
        if self.points == 0 { 0.0 } else { self.bytes as f64 / self.points as f64 }
    }
}

/// One space's shards and the ids they hold.
pub struct SpaceIndex {
    params: IndexParams,
    dim: usize,
    dir: PathBuf,
    open: OpenShard,
    pub(super) sealed: Vec<Shard>,
    next_shard: u64,
    /// Where each id is: `(shard, row)` for sealed shards, `(OPEN, 0)` for the open shard.
    ids: HashMap<u64, (u32, u32)>,
    /// Ids in the index that the archive is not known to hold: a snapshot taken before their archive file was
    /// written, then a crash. A replay of such a segment must reach the archive again.
    unarchived: HashSet<u64>,
    /// Points inserted into the open shard since its last snapshot.
    unsaved: usize,
    /// The manifest in force no longer describes the shards (a seal or a tier change).
    pub(super) changed: bool,
    /// Counts changes that can alter an answer (inserts, seals, tier moves): cached answers of an older generation
    /// are stale.
    generation: u64,
    /// When (seconds since the epoch) sealing the full open shard last failed.
    seal_failed_at: Option<u64>,
    /// Opened by a reader beside the job that owns the files: nothing is ever written.
    read_only: bool,
}

/// What [`SpaceIndex::offer`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// A new id: inserted; the segment goes on to the sinks.
    Inserted,
    /// In the index but not in the archive: not inserted again; the segment goes on to the sinks.
    Unarchived,
    /// Indexed and archived already: dropped.
    Duplicate,
}

/// A search in one space.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The query vector (any length-`dim` vector with a direction).
    pub vector: &'a [f32],
    /// Neighbours wanted.
    pub k: usize,
    /// Beam width.
    pub ef: usize,
    /// Which segments may answer.
    pub filter: &'a Filter,
}

impl SpaceIndex {
    /// An empty index keeping its files in `dir`.
    pub fn new(dir: &Path, params: &IndexParams, dim: usize) -> Self {
        SpaceIndex {
            params: params.clone(),
            dim,
            dir: dir.to_path_buf(),
            open: OpenShard::new(params),
            sealed: Vec::new(),
            next_shard: 1,
            ids: HashMap::new(),
            unarchived: HashSet::new(),
            unsaved: 0,
            changed: false,
            generation: 0,
            seal_failed_at: None,
            read_only: false,
        }
    }

    /// Opens the index published in `dir`, or an empty one when there is none, for the job that owns it: what no
    /// manifest names (a seal or a save cut short) is removed.
    pub fn open(dir: &Path, params: &IndexParams, dim: usize) -> Result<Self, Error> {
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let (index, keep) = SpaceIndex::load(dir, params, dim)?;
        let Some(keep) = keep else { return Ok(index) };
        for entry in fs::read_dir(dir).map_err(|e| failed(e.to_string()))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        Ok(index)
    }

    /// Opens the index published in `dir` for a reader beside the job that owns it (`chorus query`, `chorus
    /// serve`): nothing on disk is ever changed — no file removed, no shard sealed, no manifest published; points
    /// inserted stay in memory. A job publishing a new manifest while this one is read (and removing the files of
    /// the previous one) makes the read start again from `CURRENT`, up to [`READ_ATTEMPTS`] times.
    pub fn open_read_only(dir: &Path, params: &IndexParams, dim: usize) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            match SpaceIndex::load(dir, params, dim) {
                Ok((mut index, _)) => {
                    index.read_only = true;
                    return Ok(index);
                }
                Err(error) if attempt >= READ_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, "The index changed while it was read; reading it again.");
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
                    attempt += 1;
                }
            }
        }
    }

    /// Reads the published state; returns it with the names in `dir` it uses (`None`: nothing is published).
    fn load(dir: &Path, params: &IndexParams, dim: usize) -> Result<(Self, Option<HashSet<String>>), Error> {
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let current = match fs::read_to_string(dir.join("CURRENT")) {
            Ok(name) => name.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((SpaceIndex::new(dir, params, dim), None)),
            Err(e) => return Err(failed(format!("cannot read CURRENT: {e}"))),
        };
        let manifest = if current.ends_with(".json") {
            let bytes = fs::read(dir.join(&current)).map_err(|e| failed(format!("cannot read {current}: {e}")))?;
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("{current} is not a manifest: {e}")))?
        } else {
            // A single-graph snapshot from before shards: it becomes the open shard.
            Manifest { open: Some(current.clone()), next_shard: 1, shards: Vec::new() }
        };
        let mut index = SpaceIndex::new(dir, params, dim);
        index.next_shard = manifest.next_shard;
        if let Some(open) = &manifest.open {
            index.open = load_open(&dir.join(open), params, dim)?;
            let open = hnsw_points(&index.open.hnsw).map(|p| (p.get_origin_id() as u64, (OPEN, 0)));
            index.ids.extend(open);
        }
        for entry in &manifest.shards {
            let shard = Shard::open(dir, &entry.name, entry.tier, entry.last_used, dim)?;
            let number = index.sealed.len() as u32;
            index.ids.extend(shard.rows().ids.iter().enumerate().map(|(row, id)| (*id, (number, row as u32))));
            index.sealed.push(shard);
        }
        let keep: HashSet<String> = manifest
            .open
            .iter()
            .cloned()
            .chain(manifest.shards.iter().map(|s| s.name.clone()))
            .chain([current, "CURRENT".to_owned()])
            .collect();
        Ok((index, Some(keep)))
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Points in the shards themselves (equal to [`SpaceIndex::len`] unless an id was inserted twice).
    pub fn points(&self) -> usize {
        self.open.len() + self.sealed.iter().map(Shard::len).sum::<usize>()
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is indexed.
    pub fn contains(&self, id: SegmentId) -> bool {
        self.ids.contains_key(&id.0)
    }

    /// See the field: changes whenever an answer may change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where and when segment `id` was recorded, if it is indexed.
    pub fn point(&self, id: SegmentId) -> Option<PointInfo> {
        let (shard, row) = *self.ids.get(&id.0)?;
        let (sensor, start) = if shard == OPEN {
            let (sensor, start) = self.open.info.get(&id.0)?;
            (self.open.sensors[*sensor as usize].clone(), *start)
        } else {
            let rows = self.sealed.get(shard as usize)?.rows();
            (rows.sensors[rows.sensor[row as usize] as usize].clone(), rows.start[row as usize])
        };
        Some(PointInfo { sensor, start_micros: start })
    }

    /// The `n` points with the latest start times, latest first (ties by id).
    pub fn latest(&self, n: usize) -> Vec<(SegmentId, PointInfo)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::with_capacity(n + 1);
        let mut offer = |start: i64, id: u64| {
            if heap.len() < n {
                heap.push(Reverse((start, id)));
            } else if heap.peek().is_some_and(|Reverse(least)| (start, id) > *least) {
                heap.pop();
                heap.push(Reverse((start, id)));
            }
        };
        for (id, (_, start)) in &self.open.info {
            offer(*start, *id);
        }
        for shard in &self.sealed {
            let rows = shard.rows();
            for (row, id) in rows.ids.iter().enumerate() {
                offer(rows.start[row], *id);
            }
        }
        let mut latest: Vec<(i64, u64)> = heap.into_iter().map(|Reverse(entry)| entry).collect();
        latest.sort_unstable_by(|a, b| b.cmp(a));
        latest.into_iter().filter_map(|(_, id)| Some((SegmentId(id), self.point(SegmentId(id))?))).collect()
    }

    /// The normalised vector of segment `id`, if it is indexed: from memory, or from a sealed shard's file.
    pub fn vector(&self, id: SegmentId) -> Option<Vec<f32>> {
        let (shard, row) = *self.ids.get(&id.0)?;
        if shard == OPEN {
            let point = hnsw_points(&self.open.hnsw).find(|p| p.get_origin_id() as u64 == id.0)?;
            return unit(point.get_v(), self.dim).ok();
        }
        self.sealed.get(shard as usize)?.full_row(row as usize)
    }

    /// Calls `visit(id, unit vector)` for every point: the open shard's from memory, sealed shards' from their files.
    pub fn for_each_vector(&self, mut visit: impl FnMut(SegmentId, Vec<f32>)) {
        for point in hnsw_points(&self.open.hnsw) {
            if let Ok(v) = unit(point.get_v(), self.dim) {
                visit(SegmentId(point.get_origin_id() as u64), v);
            }
        }
        for shard in &self.sealed {
            for (row, id) in shard.rows().ids.iter().enumerate() {
                if let Some(v) = shard.full_row(row) {
                    visit(SegmentId(*id), v);
                }
            }
        }
    }

    /// Sealed shards.
    pub fn shards(&self) -> &[Shard] {
        &self.sealed
    }

    /// Records which of the indexed ids the archive holds: the others are re-archived when a replay offers them.
    pub fn reconcile(&mut self, archived: &HashSet<u64>) {
        self.unarchived = self.ids.keys().filter(|id| !archived.contains(id)).copied().collect();
    }

    /// Ids in the index that the archive is not known to hold.
    pub fn unarchived(&self) -> usize {
        self.unarchived.len()
    }

    /// Offers a segment from the stream: see [`Offered`].
    pub fn offer(&mut self, id: SegmentId, info: &PointInfo, embedding: &[f32], now: u64) -> Result<Offered, Error> {
        if self.ids.contains_key(&id.0) {
            return Ok(if self.unarchived.remove(&id.0) { Offered::Unarchived } else { Offered::Duplicate });
        }
        self.insert(id, info, embedding, now)?;
        Ok(Offered::Inserted)
    }

    /// Offers many segments at once, as [`SpaceIndex::offer`] would one after the other, inserting the new ones in
    /// parallel; a vector without a direction or of the wrong length fails alone.
    pub fn offer_many(&mut self, points: &[(SegmentId, PointInfo, &[f32])], now: u64) -> Vec<Result<Offered, Error>> {
        let mut results = Vec::with_capacity(points.len());
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        for (i, (id, _, embedding)) in points.iter().enumerate() {
            if self.ids.contains_key(&id.0) || seen.contains(&id.0) {
                results.push(Ok(if self.unarchived.remove(&id.0) { Offered::Unarchived } else { Offered::Duplicate }));
            } else if let Err(error) = unit(embedding, self.dim) {
                results.push(Err(error));
            } else {
                seen.insert(id.0);
                fresh.push(i);
                results.push(Ok(Offered::Inserted));
            }
        }
        let batch: Vec<(SegmentId, PointInfo, &[f32])> = fresh.iter().map(|&i| points[i].clone()).collect();
        if let Err(error) = self.insert_many(&batch, now) {
            let message = error.to_string();
            for i in fresh {
                results[i] = Err(Error::Index { path: self.dir.display().to_string(), message: message.clone() });
            }
        }
        results
    }

    /// Inserts `embedding` under `id`; returns false (and changes nothing) when `id` is already indexed. Seals the
    /// open shard when it is full.
    pub fn insert(&mut self, id: SegmentId, info: &PointInfo, embedding: &[f32], now: u64) -> Result<bool, Error> {
        Ok(self.insert_many(&[(id, info.clone(), embedding)], now)? == 1)
    }

    /// Inserts many points at once, in parallel; returns how many were new.
    pub fn insert_many(&mut self, points: &[(SegmentId, PointInfo, &[f32])], now: u64) -> Result<usize, Error> {
        let mut fresh = Vec::with_capacity(points.len());
        let mut seen = HashSet::new();
        for (id, info, embedding) in points {
            if self.ids.contains_key(&id.0) || !seen.insert(id.0) {
                continue;
            }
            let vector: Vec<f32> = unit(embedding, self.dim)?.into_iter().map(|x| x * SHRINK).collect();
            fresh.push((id.0, info, vector));
        }
        let inserted = fresh.len();
        if inserted > 0 {
            self.generation += 1;
        }
        let mut rest = fresh.as_slice();
        while !rest.is_empty() {
            // While sealing is failing, the open shard takes everything.
            let room = if self.open.len() >= self.params.shard_max_points {
                rest.len()
            } else {
                self.params.shard_max_points - self.open.len()
            };
            let (now_in, later) = rest.split_at(room.min(rest.len()));
            for (id, info, _) in now_in {
                self.open.describe(*id, info);
                self.ids.insert(*id, (OPEN, 0));
            }
            if now_in.len() == 1 {
                self.open.hnsw.insert_slice((&now_in[0].2, now_in[0].0 as usize));
            } else {
                let batch: Vec<(&[f32], usize)> =
                    now_in.iter().map(|(id, _, v)| (v.as_slice(), *id as usize)).collect();
                self.open.hnsw.parallel_insert_slice(&batch);
            }
            self.open.opened_at.get_or_insert(now);
            self.unsaved += now_in.len();
            self.seal_when_full(now);
            rest = later;
        }
        Ok(inserted)
    }

    /// Fills in where and when an indexed point was recorded, when its snapshot did not say.
    pub fn describe(&mut self, id: SegmentId, info: &PointInfo) {
        if self.open.undescribed.remove(&id.0) {
            self.open.describe(id.0, info);
        }
    }

    /// Seals the open shard (when it holds any point) into a new shard in the f32 tier and publishes the change.
    ///
    /// All or nothing: the shard is written first, and only once it is on disk does it replace the open shard and do
    /// the ids move to it. Should the write fail (a full disk), the open shard and every id stay as they were.
    pub fn seal(&mut self, now: u64) -> Result<(), Error> {
        if self.open.len() == 0 {
            return Ok(());
        }
        self.writable()?;
        let mut extracted = Graph::from_hnsw(&self.open.hnsw);
        for x in &mut extracted.vectors {
            *x /= SHRINK;
        }
        let (sensor, start) = extracted.ids.iter().map(|id| self.open.info[id]).unzip();
        let rows = Rows { ids: extracted.ids.clone(), sensor, start, sensors: self.open.sensors.clone() };
        let name = format!("shard-{:06}", self.next_shard);
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::Index { path: self.dir.display().to_string(), message: e.to_string() })?;
        let shard = Shard::seal(&self.dir, &name, extracted, rows, self.dim, now)?;
        tracing::debug!(dir = %self.dir.display(), shard = name, points = shard.len(), "Shard sealed.");
        let number = self.sealed.len() as u32;
        for (row, id) in shard.rows().ids.iter().enumerate() {
            self.ids.insert(*id, (number, row as u32));
        }
        self.open = OpenShard::new(&self.params);
        self.sealed.push(shard);
        self.next_shard += 1;
        self.seal_failed_at = None;
        self.unsaved = 0;
        self.changed = true;
        self.publish()
    }

    /// Seals the open shard once it is full, unless a seal failed less than [`SEAL_RETRY_SECONDS`] ago. A failure is
    /// logged, not returned: the points are in the open shard, which goes on taking inserts until a seal succeeds.
    fn seal_when_full(&mut self, now: u64) {
        let deferred = self.seal_failed_at.is_some_and(|at| now < at.saturating_add(SEAL_RETRY_SECONDS));
        if self.open.len() < self.params.shard_max_points || deferred || self.read_only {
            return;
        }
        if let Err(error) = self.seal(now) {
            tracing::error!(%error, points = self.open.len(), retry_seconds = SEAL_RETRY_SECONDS, "The full open shard could not be sealed; it keeps every point and takes more until a seal succeeds.");
            self.seal_failed_at = Some(now);
        }
    }

    /// The `k` nearest segments, nearest first, with cosine distances, over every shard; `cold` answers for shards
    /// in the archive tier (without it they are skipped). Shards that answer are marked used at `now`.
    pub fn search(
        &self,
        request: &Request<'_>,
        cold: Option<&dyn ColdTier>,
        now: u64,
    ) -> Result<Vec<(SegmentId, f32)>, Error> {
        let query = unit(request.vector, self.dim)?;
        let (k, ef, filter) = (request.k, request.ef, request.filter);
        let oversample = self.params.rescore_oversample;
        let warm: Vec<(usize, &Shard)> = (self.sealed.iter().enumerate())
            .filter(|(_, s)| s.tier() != Tier::Archive && s.may_admit(filter))
            .collect();
        let in_memory = self.open.len() + warm.iter().map(|(_, s)| s.len()).sum::<usize>();
        // Each candidate carries the sealed shard it came from (`usize::MAX`: the open shard).
        let search_sealed = |(i, shard): &(usize, &Shard)| -> Vec<(u64, f32, usize)> {
            shard.search(&query, k, ef, oversample, filter).into_iter().map(|(id, d)| (id, d, *i)).collect()
        };
        let search_open = || -> Vec<(u64, f32, usize)> {
            self.open.search(&query, k, ef, filter).into_iter().map(|(id, d)| (id, d, usize::MAX)).collect()
        };
        // In parallel only when there are two searches or more to share out, and enough points to repay the handoff.
        let searches = warm.len() + usize::from(self.open.len() > 0);
        let (mut found, sealed): (Vec<_>, Vec<_>) = if in_memory >= PARALLEL_POINTS && searches >= 2 {
            rayon::join(search_open, || warm.par_iter().map(search_sealed).collect())
        } else {
            (search_open(), warm.iter().map(search_sealed).collect())
        };
        found.extend(sealed.into_iter().flatten());
        let archived =
            || (self.sealed.iter().enumerate()).filter(|(_, s)| s.tier() == Tier::Archive && s.may_admit(filter));
        if let Some(cold) = cold
            && archived().next().is_some()
        {
            let members: HashMap<u64, usize> =
                archived().flat_map(|(i, s)| s.rows().ids.iter().map(move |id| (*id, i))).collect();
            cold.scan(filter, &mut |id, embedding| {
                if let Some(shard) = members.get(&id)
                    && let Ok(vector) = unit(embedding, self.dim)
                {
                    found.push((id, super::kernels::distance(&query, &vector), *shard));
                }
            })?;
        }
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.dedup_by_key(|(id, _, _)| *id);
        found.truncate(k);
        let answered: HashSet<usize> = found.iter().map(|(_, _, shard)| *shard).collect();
        for shard in answered.into_iter().filter_map(|i| self.sealed.get(i)) {
            shard.touch(now);
        }
        Ok(found.into_iter().map(|(id, d, _)| (SegmentId(id), d)).collect())
    }

    /// Moves sealed shard `shard` (by position in [`SpaceIndex::shards`]) to `tier` now, whatever the policy says;
    /// the policy may move it again at the next [`SpaceIndex::maintain`].
    pub fn set_shard_tier(&mut self, shard: usize, tier: Tier) -> Result<(), Error> {
        let Some(target) = self.sealed.get_mut(shard) else {
            return Err(Error::Index {
                path: self.dir.display().to_string(),
                message: format!("no sealed shard {shard} (there are {})", self.sealed.len()),
            });
        };
        if target.tier() != tier {
            target.set_tier(tier)?;
            self.changed = true;
            self.generation += 1;
        }
        Ok(())
    }

    /// Memory per tier, the open shard counted as f32.
    pub fn usage(&self) -> Vec<(Tier, TierUsage)> {
        Tier::ALL
            .iter()
            .map(|tier| {
                let mut usage = TierUsage::default();
                if *tier == Tier::F32 && self.open.len() > 0 {
                    usage = TierUsage { shards: 1, points: self.open.len(), bytes: self.open.bytes(self.dim) };
                }
                for shard in self.sealed.iter().filter(|s| s.tier() == *tier) {
                    usage.shards += 1;
                    usage.points += shard.len();
                    usage.bytes += shard.bytes();
                }
                (*tier, usage)
            })
            .collect()
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.open.bytes(self.dim) + self.sealed.iter().map(Shard::bytes).sum::<usize>()
    }

    /// Applies the tier policy at `now` (seconds since the epoch) within `budget` bytes (for this space): seals an
    /// open shard past its age; promotes a shard one tier after `promote_after_hits` answers; demotes shards whose
    /// last use is older than a tier's age; then demotes the least recently used shards, one tier at a time, until
    /// the space fits the budget. Publishes any change; returns whether there was one.
    pub fn maintain(&mut self, now: u64, budget: Option<usize>) -> Result<bool, Error> {
        let mut changed = false;
        let deferred = self.seal_failed_at.is_some_and(|at| now < at.saturating_add(SEAL_RETRY_SECONDS));
        if self.open.opened_at.is_some_and(|t| now.saturating_sub(t) >= self.params.shard_max_age.as_secs())
            && !deferred
            && !self.read_only
        {
            match self.seal(now) {
                Ok(()) => changed = true,
                Err(error) => {
                    tracing::error!(%error, retry_seconds = SEAL_RETRY_SECONDS, "The open shard could not be sealed by age; it stays open.");
                    self.seal_failed_at = Some(now);
                }
            }
        }
        for i in 0..self.sealed.len() {
            let shard = &self.sealed[i];
            let target = if shard.hits() >= self.params.promote_after_hits {
                shard.reset_hits();
                shard.used(now);
                shard.tier().warmer().unwrap_or(Tier::F32)
            } else {
                let aged = self.params.tier_for_age(now.saturating_sub(shard.last_used()));
                aged.max(shard.tier())
            };
            if target != self.sealed[i].tier() {
                tracing::debug!(
                    shard = self.sealed[i].name,
                    from = self.sealed[i].tier().name(),
                    to = target.name(),
                    "Shard moves tier."
                );
                self.sealed[i].set_tier(target)?;
                changed = true;
            }
        }
        if let Some(budget) = budget {
            while self.bytes() > budget {
                let Some(coldest) = self
                    .sealed
                    .iter_mut()
                    .filter(|s| s.tier() != Tier::Archive)
                    .min_by_key(|s| (s.last_used(), std::cmp::Reverse(s.tier())))
                else {
                    break;
                };
                let to = coldest.tier().colder().expect("not the archive tier");
                tracing::debug!(shard = coldest.name, to = to.name(), "Shard demoted to fit the memory budget.");
                coldest.set_tier(to)?;
                changed = true;
            }
        }
        if changed {
            self.generation += 1;
        }
        if (changed || self.changed) && !self.read_only {
            self.changed = true;
            self.publish()?;
        }
        Ok(changed)
    }

    /// Refuses a change on disk to an index opened by a reader.
    fn writable(&self) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::Index {
                path: self.dir.display().to_string(),
                message: "opened read-only, beside the job that owns it: nothing is written".into(),
            });
        }
        Ok(())
    }

    /// Points inserted into the open shard since the last snapshot.
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// Writes a snapshot of the open shard (when it changed) and publishes a manifest naming it and the sealed
    /// shards; does nothing when nothing changed.
    pub fn save(&mut self) -> Result<(), Error> {
        if self.unsaved == 0 && !self.changed {
            return Ok(());
        }
        self.publish()
    }

    fn publish(&mut self) -> Result<(), Error> {
        self.writable()?;
        let dir = self.dir.clone();
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create directory: {e}")))?;
        let previous = fs::read_to_string(dir.join("CURRENT")).ok().map(|s| s.trim().to_owned());
        let sequence = previous.as_deref().and_then(sequence_of).unwrap_or(0) + 1;
        let previous_open = previous.as_deref().and_then(|p| {
            if p.ends_with(".json") {
                fs::read(dir.join(p))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                    .and_then(|m| m.open)
            } else {
                Some(p.to_owned())
            }
        });
        let open = if self.open.len() == 0 {
            None
        } else if self.unsaved == 0 && previous_open.is_some() {
            previous_open.clone()
        } else {
            let name = format!("open-{sequence:010}");
            write_open(&dir.join(&name), &self.open).map_err(|e| failed(format!("cannot write snapshot: {e}")))?;
            Some(name)
        };
        let manifest = Manifest {
            open: open.clone(),
            next_shard: self.next_shard,
            shards: self
                .sealed
                .iter()
                .map(|s| ShardEntry { name: s.name.clone(), tier: s.tier(), last_used: s.last_used() })
                .collect(),
        };
        let name = format!("manifest-{sequence:010}.json");
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
        write_synced(&dir.join(&name), &body).map_err(|e| failed(format!("cannot write {name}: {e}")))?;
        durable::replace(&dir.join("CURRENT"), format!("{name}\n").as_bytes())
            .map_err(|e| failed(format!("cannot publish {name}: {e}")))?;
        for old in [previous, previous_open.filter(|p| Some(p) != open.as_ref())].into_iter().flatten() {
            if old != name {
                let path = dir.join(&old);
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        self.unsaved = 0;
        self.changed = false;
        Ok(())
    }
}

/// Every point of an hnsw_rs graph, each once. hnsw_rs's own iterator over all points unwraps the graph's entry
/// point, so it panics on an empty graph (an open shard just sealed, a space whose first segment is still on its way
/// to the archive); its per-layer iterators do not, and every point lives in exactly one layer's list.
pub(super) fn hnsw_points<'a, 'b: 'a>(
    hnsw: &'a Hnsw<'b, f32, DistDot>,
) -> impl Iterator<Item = Arc<Point<'b, f32>>> + 'a {
    let indexation = hnsw.get_point_indexation();
    (0..=usize::from(hnsw.get_max_level_observed())).flat_map(move |layer| indexation.get_layer_iterator(layer))
}

fn sequence_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    stem.rsplit('-').next()?.parse().ok()
}

/// hnsw_rs's dump of the open shard plus `rows.bin` (id, sensor number, start) and `sensors.json`.
fn write_open(target: &Path, open: &OpenShard) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(target);
    fs::create_dir_all(target)?;
    open.hnsw.file_dump(target, SNAPSHOT_BASENAME).map_err(std::io::Error::other)?;
    for file in ["graph", "data"] {
        fs::File::open(target.join(format!("{SNAPSHOT_BASENAME}.hnsw.{file}")))?.sync_all()?;
    }
    let mut rows = Vec::with_capacity(open.info.len() * 20);
    for (id, (sensor, start)) in &open.info {
        rows.extend_from_slice(&id.to_le_bytes());
        rows.extend_from_slice(&sensor.to_le_bytes());
        rows.extend_from_slice(&start.to_le_bytes());
    }
    write_synced(&target.join("rows.bin"), &rows)?;
    write_synced(&target.join("sensors.json"), &serde_json::to_vec(&open.sensors)?)
}

fn load_open(target: &Path, params: &IndexParams, dim: usize) -> Result<OpenShard, Error> {
    let failed = |message: String| Error::Index { path: target.display().to_string(), message };
    // A reloaded hnsw_rs graph borrows its loader for as long as it lives; the loader is a few bytes and an open
    // shard is loaded once per process, so it is leaked to give the graph a 'static lifetime.
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(target, SNAPSHOT_BASENAME)));
    let hnsw: Hnsw<'static, f32, DistDot> = io.load_hnsw().map_err(|e| failed(format!("cannot load snapshot: {e}")))?;
    if hnsw.get_nb_point() > 0 {
        let found = hnsw_points(&hnsw).next().map_or(dim, |p| p.get_v().len());
        if found != dim {
            return Err(failed(format!(
                "snapshot holds {found}-dimensional vectors but the model produces {dim}: it belongs to another model"
            )));
        }
    }
    let mut open = OpenShard::new(params);
    open.hnsw = hnsw;
    if let Ok(sensors) = fs::read(target.join("sensors.json")) {
        open.sensors = serde_json::from_slice(&sensors).map_err(|e| failed(format!("sensors.json: {e}")))?;
        open.sensor_numbers = open.sensors.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        let rows = fs::read(target.join("rows.bin")).map_err(|e| failed(format!("rows.bin: {e}")))?;
        for row in rows.chunks_exact(20) {
            let id = u64::from_le_bytes(row[0..8].try_into().expect("8 bytes"));
            let sensor = u32::from_le_bytes(row[8..12].try_into().expect("4 bytes"));
            let start = i64::from_le_bytes(row[12..20].try_into().expect("8 bytes"));
            if (sensor as usize) < open.sensors.len() {
                open.info.insert(id, (sensor, start));
            }
        }
    }
    let unknown = PointInfo { sensor: String::new(), start_micros: 0 };
    let ids: Vec<u64> = hnsw_points(&open.hnsw).map(|p| p.get_origin_id() as u64).collect();
    for id in ids {
        if !open.info.contains_key(&id) {
            open.describe(id, &unknown);
            open.undescribed.insert(id);
        }
    }
    if open.len() > 0 {
        open.opened_at =
            Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    }
    Ok(open)
}
