//! One space's index: the type that ties its open shard, its sealed shards, their policy and their manifest together.
//!
//! New segments go to the open shard (`build.rs`). When it holds `shard_max_points` or has been open for
//! `shard_max_age` (`policy.rs` decides), it is sealed: its graph is frozen into a [`Shard`] on disk (`shard.rs`) and a
//! fresh open shard begins. Sealed shards move between tiers by age and by the memory budget, and back up when
//! queries keep drawing on them (see [`SpaceIndex::maintain`]). A query fans out over the shards and merges by
//! distance (`search.rs`). Each seal, tier move and snapshot is published as a new manifest (`manifest.rs`); the
//! space keeps which shard holds each id, which ids the archive lacks, and what is not yet published.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::build::{OpenShard, prepare};
use super::config::IndexParams;
use super::kernels::Tier;
use super::manifest::{self, Manifest};
use super::point::{PointInfo, unit};
use super::policy::{self, SEAL_RETRY_SECONDS};
use super::search::{FanOut, Request};
use super::shard::{Rows, Shard};
use crate::Error;
use crate::record::SegmentId;

/// The shard number of the open shard in [`SpaceIndex`]'s id map.
const OPEN: u32 = u32::MAX;
/// Bytes a bucket of the map of ids takes: an entry and a control byte.
const ID_BYTES: usize = std::mem::size_of::<(u64, (u32, u32))>() + 1;
/// Times a reader reads an index that keeps changing under it before it gives up.
const READ_ATTEMPTS: u32 = 10;

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
    /// Where each id is: `(shard, row)` for sealed shards, `(OPEN, 0)` for the open shard. Those of shards in the
    /// archive tier are not here, but in their shard's filter and files: their memory does not grow with the rows.
    ids: HashMap<u64, (u32, u32)>,
    /// Points in shards in the archive tier.
    archived: usize,
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
    /// Bytes the space may hold (the last budget given), which picks the tier a sealed shard starts in.
    budget: Option<usize>,
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

impl SpaceIndex {
    /// An empty index keeping its files in `dir`.
    pub fn new(dir: &Path, params: &IndexParams, dim: usize) -> Self {
        SpaceIndex {
            params: params.clone(),
            dim,
            dir: dir.to_path_buf(),
            open: OpenShard::new(params, dim),
            sealed: Vec::new(),
            next_shard: 1,
            ids: HashMap::new(),
            archived: 0,
            unarchived: HashSet::new(),
            unsaved: 0,
            changed: false,
            generation: 0,
            seal_failed_at: None,
            read_only: false,
            budget: None,
        }
    }

    /// Opens the index published in `dir`, or an empty one when there is none, for the job that owns it: what no
    /// manifest names (a seal or a save cut short) is removed.
    pub fn open(dir: &Path, params: &IndexParams, dim: usize) -> Result<Self, Error> {
        let (index, keep) = SpaceIndex::load(dir, params, dim)?;
        if let Some(keep) = keep {
            manifest::remove_unnamed(dir, &keep)?;
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
        let Some((current, manifest)) = Manifest::read(dir)? else {
            return Ok((SpaceIndex::new(dir, params, dim), None));
        };
        let mut index = SpaceIndex::new(dir, params, dim);
        index.next_shard = manifest.next_shard;
        if let Some(open) = &manifest.open {
            index.open = manifest::load_open(&dir.join(open), params, dim)?;
            let open = index.open.ids().map(|id| (id, (OPEN, 0)));
            index.ids.extend(open);
        }
        for entry in &manifest.shards {
            let shard = Shard::open(dir, &entry.name, entry.tier, entry.last_used, dim)?;
            let number = index.sealed.len() as u32;
            if shard.tier() == Tier::Archive {
                index.archived += shard.len();
            } else {
                index.ids.extend(shard.rows()?.ids.iter().enumerate().map(|(row, id)| (*id, (number, row as u32))));
            }
            index.sealed.push(shard);
        }
        let keep = manifest.names(&current);
        Ok((index, Some(keep)))
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ids.len() + self.archived
    }

    /// Points in the shards themselves (equal to [`SpaceIndex::len`] unless an id was inserted twice).
    pub fn points(&self) -> usize {
        self.open.len() + self.sealed.iter().map(Shard::len).sum::<usize>()
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is indexed (false when a shard in the archive tier that may hold it cannot be read; logged).
    pub fn contains(&self, id: SegmentId) -> bool {
        self.found(self.find(id.0, None)).is_some()
    }

    /// Whether `id` is in the open shard or a sealed shard outside the archive tier: with
    /// [`SpaceIndex::archive_tier_ids`], what [`SpaceIndex::contains`] says, for a pass over many ids.
    pub fn contains_outside_archive_tier(&self, id: SegmentId) -> bool {
        self.ids.contains_key(&id.0)
    }

    /// The ids of the shards in the archive tier, read from their files: for a pass over many ids (the catch-up from
    /// the archive at start), where [`SpaceIndex::contains`] would read a shard's rows for each id it holds.
    pub fn archive_tier_ids(&self) -> HashSet<u64> {
        let mut ids = HashSet::with_capacity(self.archived);
        for shard in self.sealed.iter().filter(|s| s.tier() == Tier::Archive) {
            match shard.ids() {
                Ok(held) => ids.extend(held.iter().copied()),
                Err(error) => tracing::warn!(shard = shard.name, %error, "A sealed shard's rows cannot be read."),
            }
        }
        ids
    }

    /// Where `id` is, `(shard, row)` as in the map of ids: from the map, or from the shards in the archive tier
    /// (those whose time range holds `start`, when given), with the rows such a shard's files gave. An error when
    /// a shard in the archive tier that may hold `id` cannot be read: whether it holds it is not known.
    fn find(&self, id: u64, start: Option<i64>) -> Result<Option<(u32, u32, Option<Rows>)>, Error> {
        if let Some((shard, row)) = self.ids.get(&id) {
            return Ok(Some((*shard, *row, None)));
        }
        if self.archived == 0 {
            return Ok(None);
        }
        for (number, shard) in self.sealed.iter().enumerate() {
            if let Some((row, rows)) = shard.archived_row(id, start)? {
                return Ok(Some((number as u32, row as u32, Some(rows))));
            }
        }
        Ok(None)
    }

    /// What [`SpaceIndex::find`] found, an error logged as not found, for readers.
    fn found(&self, found: Result<Option<(u32, u32, Option<Rows>)>, Error>) -> Option<(u32, u32, Option<Rows>)> {
        found.unwrap_or_else(|error| {
            tracing::warn!(dir = %self.dir.display(), %error, "A shard in the archive tier cannot be read.");
            None
        })
    }

    /// Whether `id`, recorded at `start`, is indexed, for an insertion: an error when that cannot be told.
    fn holds(&self, id: u64, start: i64) -> Result<bool, Error> {
        Ok(self.find(id, Some(start))?.is_some())
    }

    /// See the field: changes whenever an answer may change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where and when segment `id` was recorded, if it is indexed.
    pub fn point(&self, id: SegmentId) -> Option<PointInfo> {
        let (shard, row, read) = self.found(self.find(id.0, None))?;
        if shard == OPEN {
            return self.open.info(id.0);
        }
        let rows = match read {
            Some(rows) => std::borrow::Cow::Owned(rows),
            None => rows_or_log(self.sealed.get(shard as usize)?)?,
        };
        Some(rows.info(row as usize))
    }

    /// Where and when each of `ids` was recorded, as [`SpaceIndex::point`] says, with each shard in the archive tier
    /// that holds some of them read once (a search's hits, the latest points).
    pub fn points_of(&self, ids: &[SegmentId]) -> Vec<Option<PointInfo>> {
        let mut points: Vec<Option<PointInfo>> = Vec::with_capacity(ids.len());
        let mut elsewhere = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            points.push(if self.ids.contains_key(&id.0) { self.point(*id) } else { None });
            if points[i].is_none() && self.archived > 0 {
                elsewhere.push(i);
            }
        }
        for shard in self.sealed.iter().filter(|s| s.tier() == Tier::Archive) {
            let maybe: Vec<usize> =
                elsewhere.iter().copied().filter(|i| points[*i].is_none() && shard.may_hold(ids[*i].0)).collect();
            if maybe.is_empty() {
                continue;
            }
            let Some(rows) = rows_or_log(shard) else { continue };
            let row_of: HashMap<u64, usize> = rows.ids.iter().enumerate().map(|(row, id)| (*id, row)).collect();
            for i in maybe {
                points[i] = row_of.get(&ids[i].0).map(|row| rows.info(*row));
            }
        }
        points
    }

    /// The `n` points with the latest start times, latest first (ties by id).
    pub fn latest(&self, n: usize) -> Vec<(SegmentId, PointInfo)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::with_capacity(n + 1);
        let offer = |heap: &mut BinaryHeap<_>, start: i64, id: u64| {
            if heap.len() < n {
                heap.push(Reverse((start, id)));
            } else if heap.peek().is_some_and(|Reverse(least)| (start, id) > *least) {
                heap.pop();
                heap.push(Reverse((start, id)));
            }
        };
        for (id, start) in self.open.starts() {
            offer(&mut heap, start, id);
        }
        for shard in &self.sealed {
            // A shard none of whose rows would enter is not read (one in the archive tier reads its rows).
            let least = heap.peek().filter(|_| heap.len() >= n).map(|Reverse((start, _))| *start);
            if least.is_some_and(|least| shard.range().1 < least) {
                continue;
            }
            let Some(rows) = rows_or_log(shard) else { continue };
            for (row, id) in rows.ids.iter().enumerate() {
                offer(&mut heap, rows.start[row], *id);
            }
        }
        let mut latest: Vec<(i64, u64)> = heap.into_iter().map(|Reverse(entry)| entry).collect();
        latest.sort_unstable_by(|a, b| b.cmp(a));
        let ids: Vec<SegmentId> = latest.iter().map(|(_, id)| SegmentId(*id)).collect();
        let points = self.points_of(&ids);
        ids.into_iter().zip(points).filter_map(|(id, point)| Some((id, point?))).collect()
    }

    /// The normalised vector of segment `id`, if it is indexed: from memory, or from a sealed shard's file.
    pub fn vector(&self, id: SegmentId) -> Option<Vec<f32>> {
        let (shard, row, _) = self.found(self.find(id.0, None))?;
        if shard == OPEN {
            return self.open.vector(id.0);
        }
        self.sealed.get(shard as usize)?.full_row(row as usize)
    }

    /// Calls `visit(id, unit vector)` for every point: the open shard's from memory, sealed shards' from their files.
    pub fn for_each_vector(&self, mut visit: impl FnMut(SegmentId, Vec<f32>)) {
        self.open.for_each_vector(&mut |id, v| visit(SegmentId(id), v));
        for shard in &self.sealed {
            if let Err(error) = shard.for_each_row(&mut |id, v| visit(SegmentId(id), v)) {
                tracing::warn!(shard = shard.name, %error, "A sealed shard's vectors cannot be read.");
            }
        }
    }

    /// Sealed shards.
    pub fn shards(&self) -> &[Shard] {
        &self.sealed
    }

    /// Records which of the indexed ids the archive holds: the others are re-archived when a replay offers them.
    /// `archive_tier` is [`SpaceIndex::archive_tier_ids`].
    pub fn reconcile(&mut self, archived: &HashSet<u64>, archive_tier: &HashSet<u64>) {
        let held = self.ids.keys().chain(archive_tier);
        self.unarchived = held.filter(|id| !archived.contains(id)).copied().collect();
    }

    /// Ids in the index that the archive is not known to hold.
    pub fn unarchived(&self) -> usize {
        self.unarchived.len()
    }

    /// Offers a segment from the stream: see [`Offered`].
    pub fn offer(&mut self, id: SegmentId, info: &PointInfo, embedding: &[f32], now: u64) -> Result<Offered, Error> {
        if self.holds(id.0, info.start_micros)? {
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
        for (i, (id, info, embedding)) in points.iter().enumerate() {
            let held = if seen.contains(&id.0) { Ok(true) } else { self.holds(id.0, info.start_micros) };
            match held {
                Err(error) => results.push(Err(error)),
                Ok(true) => {
                    let again = if self.unarchived.remove(&id.0) { Offered::Unarchived } else { Offered::Duplicate };
                    results.push(Ok(again));
                }
                Ok(false) => {
                    if let Err(error) = unit(embedding, self.dim) {
                        results.push(Err(error));
                    } else {
                        seen.insert(id.0);
                        fresh.push(i);
                        results.push(Ok(Offered::Inserted));
                    }
                }
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
            if seen.contains(&id.0) || self.holds(id.0, info.start_micros)? {
                continue;
            }
            seen.insert(id.0);
            fresh.push((id.0, info, prepare(embedding, self.dim)?));
        }
        let inserted = fresh.len();
        if inserted > 0 {
            self.generation += 1;
        }
        let mut rest = fresh.as_slice();
        while !rest.is_empty() {
            let (now_in, later) = rest.split_at(self.params.room(self.open.len(), rest.len()));
            self.open.insert(now_in, now);
            self.ids.extend(now_in.iter().map(|(id, _, _)| (*id, (OPEN, 0))));
            self.unsaved += now_in.len();
            self.seal_when_full(now);
            rest = later;
        }
        Ok(inserted)
    }

    /// Links up to `most` points of the open shard's write buffer into its graph; returns how many. Takes `&self`: it
    /// runs under the space's read lock, beside searches, on the index's background thread (`mod.rs`).
    pub fn link(&self, most: usize) -> usize {
        self.open.link(most)
    }

    /// Points in the open shard's write buffer, searched by a scan until they are linked into its graph.
    pub fn buffered(&self) -> usize {
        self.open.buffered()
    }

    /// Fills in where and when an indexed point was recorded, when its snapshot did not say.
    pub fn describe(&mut self, id: SegmentId, info: &PointInfo) {
        self.open.redescribe(id.0, info);
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
        let name = format!("shard-{:06}", self.next_shard);
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::Index { path: self.dir.display().to_string(), message: e.to_string() })?;
        // The write buffer is linked first: a sealed shard's graph holds every row.
        self.open.link_all();
        let open = &self.open;
        let mut shard = Shard::seal(&self.dir, &name, |out| open.freeze_into(out), self.dim, now)?;
        tracing::debug!(dir = %self.dir.display(), shard = name, points = shard.len(), "Shard sealed.");
        let number = self.sealed.len() as u32;
        for (row, id) in shard.rows()?.ids.iter().enumerate() {
            self.ids.insert(*id, (number, row as u32));
        }
        // The open shard goes before its vectors come back from the file: a seal holds one copy of them. They come
        // back in the warmest tier the space's budget has room for (the disk tier if none has).
        self.open = OpenShard::new(&self.params, self.dim);
        let held = self.reckoned_bytes();
        let tier = [Tier::F32, Tier::F16, Tier::Int8]
            .into_iter()
            .find(|tier| fits(self.budget, held, &shard, *tier))
            .unwrap_or(Tier::Disk);
        if let Err(error) = shard.set_tier(tier) {
            tracing::warn!(shard = name, %error, "A sealed shard's vectors cannot be read back; it stays in the disk tier.");
        }
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
        let deferred = policy::seal_deferred(self.seal_failed_at, now);
        if !self.params.is_full(self.open.len()) || deferred || self.read_only {
            return;
        }
        if let Err(error) = self.seal(now) {
            tracing::error!(%error, points = self.open.len(), retry_seconds = SEAL_RETRY_SECONDS, "The full open shard could not be sealed; it keeps every point and takes more until a seal succeeds.");
            self.seal_failed_at = Some(now);
        }
    }

    /// The `k` nearest segments, nearest first, with cosine distances, over every shard (those in the archive tier
    /// read from their files). Shards that answer are marked used at `now`.
    pub fn search(&self, request: &Request<'_>, now: u64) -> Result<Vec<(SegmentId, f32)>, Error> {
        let fan_out = FanOut {
            open: &self.open,
            sealed: &self.sealed,
            dim: self.dim,
            oversample: self.params.rescore_oversample,
        };
        fan_out.search(request, now)
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
            self.move_shard(shard, tier)?;
            self.changed = true;
            self.generation += 1;
        }
        Ok(())
    }

    /// Moves sealed shard `number` to `tier`, its ids out of the map into the archive tier and back out of it.
    fn move_shard(&mut self, number: usize, tier: Tier) -> Result<(), Error> {
        let shard = &mut self.sealed[number];
        let from = shard.tier();
        let leaving = (tier == Tier::Archive && from != Tier::Archive).then(|| shard.rows().map(|r| r.ids.clone()));
        shard.set_tier(tier)?;
        if let Some(ids) = leaving {
            for id in ids? {
                if self.ids.get(&id).is_some_and(|(at, _)| *at as usize == number) {
                    self.ids.remove(&id);
                }
            }
            // What the map no longer holds goes back to the allocator.
            self.ids.shrink_to_fit();
            self.archived += shard.len();
        } else if from == Tier::Archive && tier != Tier::Archive {
            let rows = shard.rows()?;
            self.ids.extend(rows.ids.iter().enumerate().map(|(row, id)| (*id, (number as u32, row as u32))));
            self.archived -= shard.len();
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

    /// Sets the bytes the space may hold, until the next [`SpaceIndex::maintain`] gives it again: a shard sealed in
    /// between starts in the warmest tier that fits.
    pub fn set_budget(&mut self, budget: Option<usize>) {
        self.budget = budget;
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.open.bytes(self.dim) + self.sealed.iter().map(Shard::bytes).sum::<usize>()
    }

    /// Bytes held in memory with the open shard counted full, as the budget reckons them: the open shard grows
    /// between two maintenances and never moves down a tier, so the sealed shards keep to what its full size leaves.
    /// The map of ids outside the archive tier counts too.
    pub fn reckoned_bytes(&self) -> usize {
        self.open.bytes_at(self.dim, self.params.shard_max_points)
            + self.sealed.iter().map(Shard::bytes).sum::<usize>()
            + self.ids_bytes()
    }

    /// Bytes the map of ids takes: at most 7 of 8 buckets full.
    fn ids_bytes(&self) -> usize {
        self.ids.capacity() * 8 / 7 * ID_BYTES
    }

    /// Applies the tier policy at `now` (seconds since the epoch) within `budget` bytes (for this space): seals an
    /// open shard past its age; promotes a shard one tier after `promote_after_hits` answers when the space has room
    /// for it within `budget`; demotes shards whose last use is older than a tier's age; then demotes the least
    /// recently used shards, one tier at a time, until the space fits the budget. Publishes any change; returns whether there was one.
    pub fn maintain(&mut self, now: u64, budget: Option<usize>) -> Result<bool, Error> {
        self.budget = budget;
        let mut changed = false;
        let deferred = policy::seal_deferred(self.seal_failed_at, now);
        if self.params.is_due_by_age(self.open.opened_at(), now) && !deferred && !self.read_only {
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
            let others = self.reckoned_bytes() - shard.bytes();
            let placement = self
                .params
                .placement(shard.tier(), shard.hits(), shard.last_used(), now, |to| fits(budget, others, shard, to));
            let shard = &mut self.sealed[i];
            if placement.promoted {
                shard.reset_hits();
                shard.used(now);
            }
            if placement.tier != shard.tier() {
                tracing::debug!(
                    shard = shard.name,
                    from = shard.tier().name(),
                    to = placement.tier.name(),
                    "Shard moves tier."
                );
                self.move_shard(i, placement.tier)?;
                changed = true;
            }
        }
        if let Some(budget) = budget {
            while self.reckoned_bytes() > budget {
                let Some(i) = policy::next_to_demote(self.sealed.iter().map(|s| (s.tier(), s.last_used()))) else {
                    break;
                };
                let coldest = &self.sealed[i];
                let to = coldest.tier().colder().expect("not the archive tier");
                tracing::debug!(shard = coldest.name, to = to.name(), "Shard demoted to fit the memory budget.");
                self.move_shard(i, to)?;
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
        manifest::publish(&self.dir, &self.open, self.unsaved == 0, self.next_shard, &self.sealed)?;
        self.unsaved = 0;
        self.changed = false;
        Ok(())
    }
}

/// `shard`'s rows, or `None` (logged) when they cannot be read: for answers that go on without it.
fn rows_or_log(shard: &Shard) -> Option<std::borrow::Cow<'_, Rows>> {
    let rows = shard.rows();
    if let Err(error) = &rows {
        tracing::warn!(shard = shard.name, %error, "A sealed shard's rows cannot be read.");
    }
    rows.ok()
}

/// Whether `shard` in `tier` fits `budget` beside `others` bytes (everything else the space holds), with its ids'
/// entries in the map when it leaves the archive tier; always without a budget.
fn fits(budget: Option<usize>, others: usize, shard: &Shard, tier: Tier) -> bool {
    let entries = if shard.tier() == Tier::Archive && tier != Tier::Archive { shard.len() * ID_BYTES } else { 0 };
    budget.is_none_or(|b| others + shard.bytes_in(tier) + entries <= b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Filter;
    use crate::index::tests::{info, insert_range, params, search, vector};

    #[test]
    fn a_snapshot_point_missing_from_the_archive_is_passed_on_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(1000), 4);
        for i in 0..3 {
            index.insert(SegmentId(i), &info(i), &vector(i, 4), 0).unwrap();
        }
        // The archive holds 0 and 1; 2 was in the snapshot only.
        index.reconcile(&[0, 1].into_iter().collect(), &HashSet::new());
        assert_eq!(index.unarchived(), 1);
        let offer = |index: &mut SpaceIndex, i| index.offer(SegmentId(i), &info(i), &vector(i, 4), 0).unwrap();
        assert_eq!(offer(&mut index, 1), Offered::Duplicate);
        assert_eq!(offer(&mut index, 2), Offered::Unarchived);
        assert_eq!(offer(&mut index, 2), Offered::Duplicate);
        assert_eq!(offer(&mut index, 3), Offered::Inserted);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn a_batch_offer_is_an_offer_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(5), 4);
        index.insert(SegmentId(0), &info(0), &vector(0, 4), 0).unwrap();
        index.insert(SegmentId(1), &info(1), &vector(1, 4), 0).unwrap();
        index.reconcile(&[0].into_iter().collect(), &HashSet::new());
        let (v2, v3, zero) = (vector(2, 4), vector(3, 4), [0.0f32; 4]);
        let points: Vec<(SegmentId, PointInfo, &[f32])> = vec![
            (SegmentId(0), info(0), &v2),
            (SegmentId(1), info(1), &v2),
            (SegmentId(2), info(2), &v2),
            (SegmentId(9), info(9), &zero),
            (SegmentId(2), info(2), &v2),
            (SegmentId(3), info(3), &v3),
        ];
        let offered: Vec<_> = index.offer_many(&points, 0).into_iter().map(|r| r.map_err(|_| "error")).collect();
        use Offered::*;
        assert_eq!(offered, [Ok(Duplicate), Ok(Unarchived), Ok(Inserted), Err("error"), Ok(Duplicate), Ok(Inserted)]);
        assert_eq!(index.len(), 4);
        assert_eq!(search(&index, &v3, 1, 16, &Filter::default())[0].0, SegmentId(3));
    }

    #[test]
    fn r15_ids_of_archive_tier_shards_leave_the_map_and_are_still_found_deduplicated_and_reconciled() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(100), dim);
        insert_range(&mut index, 0..250, dim);
        let in_memory = index.reckoned_bytes();
        for shard in 0..2 {
            index.set_shard_tier(shard, Tier::Archive).unwrap();
        }
        // The map holds the open shard's 50 ids; the 200 archived are counted, found and read from disk.
        assert_eq!((index.ids.len(), index.archived, index.len()), (50, 200, 250));
        assert!(index.reckoned_bytes() < in_memory, "{} of {in_memory}", index.reckoned_bytes());
        assert!(index.ids.capacity() < 100, "the map gave its room back: {}", index.ids.capacity());
        for i in [0, 99, 100, 199, 200, 249] {
            assert!(index.contains(SegmentId(i)), "{i}");
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
            assert!(index.vector(SegmentId(i)).is_some());
        }
        assert!(!index.contains(SegmentId(250)) && index.point(SegmentId(250)).is_none());
        // Many at once, each archived shard read once: as one at a time.
        let some: Vec<SegmentId> = [0, 150, 99, 249, 250, 120].into_iter().map(SegmentId).collect();
        let one_by_one: Vec<Option<PointInfo>> = some.iter().map(|id| index.point(*id)).collect();
        assert_eq!(index.points_of(&some), one_by_one);
        assert_eq!(one_by_one.iter().filter(|p| p.is_some()).count(), 5);
        // An id no shard holds is ruled out without a read for all but a few: of 100 000, at most 0.2 %.
        let passed = (1_000..101_000u64).filter(|id| index.sealed.iter().any(|s| s.may_hold(*id))).count();
        assert!(passed <= 200, "{passed} of 100 000 passed a filter");
        // Offered again, an archived id is a duplicate, in a batch or alone; nothing is inserted twice.
        assert_eq!(index.offer(SegmentId(42), &info(42), &vector(42, dim), 0).unwrap(), Offered::Duplicate);
        let (v7, v300) = (vector(7, dim), vector(300, dim));
        let batch: Vec<(SegmentId, PointInfo, &[f32])> =
            vec![(SegmentId(7), info(7), &v7), (SegmentId(300), info(300), &v300)];
        let offered: Vec<_> = index.offer_many(&batch, 0).into_iter().map(Result::unwrap).collect();
        assert_eq!(offered, [Offered::Duplicate, Offered::Inserted]);
        assert_eq!((index.len(), index.points()), (251, 251));
        // Archived ids the Parquet archive lacks are found by the reconciliation, and re-archived once.
        let archive_tier = index.archive_tier_ids();
        index.reconcile(&(0..251).filter(|i| *i != 150).chain([300]).collect(), &archive_tier);
        assert_eq!(index.unarchived(), 1);
        assert_eq!(index.offer(SegmentId(150), &info(150), &vector(150, dim), 0).unwrap(), Offered::Unarchived);
        assert_eq!(index.offer(SegmentId(150), &info(150), &vector(150, dim), 0).unwrap(), Offered::Duplicate);
        // Reopened, and moved back up: the map holds them again.
        index.save().unwrap();
        let reopened = SpaceIndex::open(dir.path(), &params(100), dim).unwrap();
        assert_eq!((reopened.ids.len(), reopened.archived, reopened.len()), (51, 200, 251));
        assert!(reopened.contains(SegmentId(5)));
        index.set_shard_tier(1, Tier::Disk).unwrap();
        assert_eq!((index.ids.len(), index.archived, index.len()), (151, 100, 251));
        assert_eq!(index.ids.get(&150).map(|(shard, _)| *shard), Some(1));
    }

    #[test]
    fn r15_a_shard_in_the_archive_tier_that_cannot_be_read_stays_there_and_stops_an_insert_rather_than_doubling_it() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(100), dim);
        insert_range(&mut index, 0..150, dim);
        index.set_shard_tier(0, Tier::Archive).unwrap();
        let shard_dir = dir.path().join(&index.shards()[0].name);
        // Its vectors cut short: it cannot come back up, and stays in the archive tier with its ids found.
        let vectors = std::fs::read(shard_dir.join("vectors.f32")).unwrap();
        std::fs::write(shard_dir.join("vectors.f32"), &vectors[..vectors.len() - 4]).unwrap();
        for tier in [Tier::Disk, Tier::F32] {
            let error = index.set_shard_tier(0, tier).unwrap_err().to_string();
            assert!(error.contains("vectors.f32"), "{error}");
        }
        assert_eq!(
            (index.shards()[0].tier(), index.ids.len(), index.archived, index.len()),
            (Tier::Archive, 50, 100, 150)
        );
        assert!(index.contains(SegmentId(7)));
        std::fs::write(shard_dir.join("vectors.f32"), &vectors).unwrap();
        // Its rows unreadable: an id it may hold is neither taken for new nor inserted again; the offer fails.
        let rows = std::fs::read(shard_dir.join("rows.bin")).unwrap();
        std::fs::write(shard_dir.join("rows.bin"), b"damaged").unwrap();
        assert!(index.offer(SegmentId(7), &info(7), &vector(7, dim), 0).is_err());
        let v7 = vector(7, dim);
        let batch: Vec<(SegmentId, PointInfo, &[f32])> = vec![(SegmentId(7), info(7), &v7)];
        assert!(index.offer_many(&batch, 0)[0].is_err());
        assert!(index.insert(SegmentId(7), &info(7), &v7, 0).is_err());
        // One recorded after its time range is told apart without reading it.
        assert_eq!(index.offer(SegmentId(150), &info(150), &vector(150, dim), 0).unwrap(), Offered::Inserted);
        assert_eq!((index.len(), index.points()), (151, 151));
        std::fs::write(shard_dir.join("rows.bin"), &rows).unwrap();
        assert_eq!(index.offer(SegmentId(7), &info(7), &v7, 0).unwrap(), Offered::Duplicate);
        // Reopened with a graph.bin that cannot be read, it does not open (the job then rebuilds from the archive).
        index.save().unwrap();
        std::fs::write(shard_dir.join("graph.bin"), b"damaged").unwrap();
        assert!(SpaceIndex::open(dir.path(), &params(100), dim).is_err());
    }
}
