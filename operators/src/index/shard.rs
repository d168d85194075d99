//! A sealed shard: an immutable HNSW graph over a run of inserted segments, with its vectors in one memory tier.
//!
//! On disk a shard is a directory written once: `shard.json` (size, time range, sensors), `rows.bin` (id, sensor and
//! start time per row), `graph.bin` (the frozen layers) and `vectors.f32` (full precision). In memory it holds its
//! rows, and its graph and vectors in the tier it is in: f32, f16 or int8 (see [`super::kernels`]), or the graph
//! alone (disk tier: each distance reads its row from `vectors.f32`). In the archive tier it holds nothing per row,
//! nor an open file: its time range and a Bloom filter of its ids (2 bytes a row) only. A search reads its graph
//! and rows from their files, and each distance its row, as the disk tier does. Full-precision vectors stay on disk for rescoring quantized candidates, for the
//! disk and archive tiers and for promotion.
//!
//! A shard is sealed from the open shard (`build.rs`, [`OpenShard::freeze`](super::build::OpenShard::freeze)), named
//! with its tier in the space's manifest (`manifest.rs`), and moved between tiers as the policy says (`policy.rs`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::kernels::{Tier, Vectors, distance};
use super::point::{Filter, PointInfo};
use crate::Error;

/// Bytes per row of [`Rows`] in memory: id, sensor number and start time.
const ROW_BYTES: usize = 8 + 4 + 8;

/// Where and when each row was recorded.
#[derive(Clone)]
pub struct Rows {
    /// Segment id per row.
    pub ids: Vec<u64>,
    /// Index into `sensors` per row.
    pub sensor: Vec<u32>,
    /// Start time per row, in microseconds since the epoch.
    pub start: Vec<i64>,
    /// The sensors named by `sensor`.
    pub sensors: Vec<String>,
}

impl Rows {
    /// Whether row `row` passes `filter`.
    pub fn admits(&self, filter: &Filter, row: usize) -> bool {
        filter.admits(&self.sensors[self.sensor[row] as usize], self.start[row])
    }

    /// Where and when row `row` was recorded.
    pub fn info(&self, row: usize) -> PointInfo {
        PointInfo { sensor: self.sensors[self.sensor[row] as usize].clone(), start_micros: self.start[row] }
    }

    /// Smallest and largest start time.
    fn range(&self) -> (i64, i64) {
        let min = self.start.iter().copied().min().unwrap_or(0);
        let max = self.start.iter().copied().max().unwrap_or(0);
        (min, max)
    }
}

#[derive(Serialize, Deserialize)]
struct Description {
    points: usize,
    dim: usize,
    sealed_at: u64,
    from_micros: i64,
    to_micros: i64,
    sensors: Vec<String>,
}

/// A sealed shard.
pub struct Shard {
    /// Its directory's name under the space's index directory.
    pub name: String,
    dir: PathBuf,
    dim: usize,
    points: usize,
    range: (i64, i64),
    /// Bytes its sensors' names take in [`Rows::sensors`].
    sensor_bytes: usize,
    /// Its rows, held in every tier but the archive tier.
    rows: Option<Rows>,
    graph: Option<Graph>,
    vectors: Vectors,
    /// `vectors.f32`, held open in every tier but the archive tier.
    full: Option<File>,
    /// Which ids it holds, in the archive tier: there the space's map of ids leaves them out.
    members: Option<Members>,
    /// When it was sealed (seconds since the epoch).
    pub sealed_at: u64,
    last_access: AtomicU64,
    hits: AtomicU32,
}

impl Shard {
    /// Writes shard `name` under `space_dir`: `freeze` writes the vectors (normalised, little-endian f32, row after
    /// row) and gives the graph and the rows. Returns it in the disk tier: the vectors are read back by
    /// [`Shard::set_tier`] once what they were frozen from is gone, so that a seal never holds two copies of them. The directory appears complete or not at all.
    pub fn seal(
        space_dir: &Path,
        name: &str,
        freeze: impl FnOnce(&mut dyn Write) -> std::io::Result<(Graph, Rows)>,
        dim: usize,
        now: u64,
    ) -> Result<Shard, Error> {
        let dir = space_dir.join(name);
        let tmp = space_dir.join(format!(".{name}.tmp"));
        let failed = |e: std::io::Error| Error::Index {
            path: tmp.display().to_string(),
            message: format!("cannot seal shard: {e}"),
        };
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(failed)?;
        let (graph, rows) = (|| {
            let mut out = BufWriter::new(File::create(tmp.join("vectors.f32"))?);
            let frozen = freeze(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(frozen)
        })()
        .map_err(failed)?;
        let range = rows.range();
        let description = Description {
            points: rows.ids.len(),
            dim,
            sealed_at: now,
            from_micros: range.0,
            to_micros: range.1,
            sensors: rows.sensors.clone(),
        };
        let write = |file: &str, body: &dyn Fn(&mut BufWriter<File>) -> std::io::Result<()>| -> std::io::Result<()> {
            let mut out = BufWriter::new(File::create(tmp.join(file))?);
            body(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write("shard.json", &|out| Ok(serde_json::to_writer_pretty(out, &description)?)).map_err(failed)?;
        write("rows.bin", &|out| {
            for ((id, sensor), start) in rows.ids.iter().zip(&rows.sensor).zip(&rows.start) {
                out.write_all(&id.to_le_bytes())?;
                out.write_all(&sensor.to_le_bytes())?;
                out.write_all(&start.to_le_bytes())?;
            }
            Ok(())
        })
        .map_err(failed)?;
        write("graph.bin", &|out| graph.write(out)).map_err(failed)?;
        let file_bytes = fs::metadata(tmp.join("vectors.f32")).map_err(failed)?.len();
        if file_bytes != (rows.ids.len() * dim * 4) as u64 {
            return Err(Error::Index {
                path: tmp.display().to_string(),
                message: format!("cannot seal shard: {file_bytes} bytes of vectors for {} of {dim}", rows.ids.len()),
            });
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(failed)?;
        File::open(space_dir).and_then(|d| d.sync_all()).map_err(failed)?;
        let full = File::open(dir.join("vectors.f32")).map_err(failed)?;
        Ok(Shard {
            name: name.to_owned(),
            dir,
            dim,
            points: rows.ids.len(),
            range,
            sensor_bytes: sensor_bytes(&rows.sensors),
            rows: Some(rows),
            graph: Some(graph),
            vectors: Vectors::Disk,
            full: Some(full),
            members: None,
            sealed_at: now,
            last_access: AtomicU64::new(now),
            hits: AtomicU32::new(0),
        })
    }

    /// Opens shard `name` under `space_dir` into `tier`.
    pub fn open(space_dir: &Path, name: &str, tier: Tier, last_access: u64, dim: usize) -> Result<Shard, Error> {
        let dir = space_dir.join(name);
        let description = read_description(&dir)?;
        if description.dim != dim {
            return Err(Error::Index {
                path: dir.display().to_string(),
                message: format!(
                    "shard holds {}-dimensional vectors but the model produces {dim}: it belongs to another model",
                    description.dim
                ),
            });
        }
        let mut shard = Shard {
            name: name.to_owned(),
            dir,
            dim,
            points: description.points,
            range: (description.from_micros, description.to_micros),
            sensor_bytes: sensor_bytes(&description.sensors),
            rows: None,
            graph: None,
            vectors: Vectors::Archive,
            full: None,
            members: None,
            sealed_at: description.sealed_at,
            last_access: AtomicU64::new(last_access),
            hits: AtomicU32::new(0),
        };
        if tier == Tier::Archive {
            // What a search will read must be there: a shard that cannot be searched does not open (and the index
            // is rebuilt from the archive), rather than failing every search later.
            shard.open_full()?;
            shard.read_graph()?;
            shard.members = Some(Members::of(&shard.read_rows()?.ids));
        }
        shard.set_tier(tier)?;
        Ok(shard)
    }

    /// Reads `rows.bin`, with the sensors `shard.json` names.
    fn read_rows(&self) -> Result<Rows, Error> {
        let failed = |message: String| Error::Index { path: self.dir.display().to_string(), message };
        let description = read_description(&self.dir)?;
        if description.points != self.points {
            return Err(failed(format!("shard.json names {} rows, not {}", description.points, self.points)));
        }
        let bytes = self.read_rows_file()?;
        let mut rows = Rows {
            ids: Vec::with_capacity(self.points),
            sensor: Vec::with_capacity(self.points),
            start: Vec::with_capacity(self.points),
            sensors: description.sensors,
        };
        for row in bytes.chunks_exact(ROW_BYTES) {
            rows.ids.push(u64::from_le_bytes(row[0..8].try_into().expect("8 bytes")));
            let sensor = u32::from_le_bytes(row[8..12].try_into().expect("4 bytes"));
            if sensor as usize >= rows.sensors.len() {
                return Err(failed(format!("rows.bin names sensor {sensor} of {}", rows.sensors.len())));
            }
            rows.sensor.push(sensor);
            rows.start.push(i64::from_le_bytes(row[12..20].try_into().expect("8 bytes")));
        }
        Ok(rows)
    }

    /// The bytes of `rows.bin`, checked against the number of rows.
    fn read_rows_file(&self) -> Result<Vec<u8>, Error> {
        let failed = |message: String| Error::Index { path: self.dir.display().to_string(), message };
        let bytes = fs::read(self.dir.join("rows.bin")).map_err(|e| failed(format!("cannot read rows.bin: {e}")))?;
        if bytes.len() != self.points * ROW_BYTES {
            return Err(failed(format!("rows.bin holds {} bytes, not {} rows", bytes.len(), self.points)));
        }
        Ok(bytes)
    }

    /// The rows' ids alone, from `rows.bin`: what an unfiltered search and a pass over ids need, without the
    /// sensors' names.
    pub fn ids(&self) -> Result<Cow<'_, [u64]>, Error> {
        if let Some(rows) = &self.rows {
            return Ok(Cow::Borrowed(&rows.ids));
        }
        let bytes = self.read_rows_file()?;
        Ok(Cow::Owned(
            bytes.chunks_exact(ROW_BYTES).map(|r| u64::from_le_bytes(r[0..8].try_into().expect("8"))).collect(),
        ))
    }

    /// Reads `graph.bin`.
    fn read_graph(&self) -> Result<Graph, Error> {
        let path = self.dir.join("graph.bin");
        let failed = |message: String| Error::Index { path: path.display().to_string(), message };
        let graph =
            File::open(&path).and_then(|f| Graph::read(&mut BufReader::new(f))).map_err(|e| failed(e.to_string()))?;
        if graph.len() != self.len() {
            return Err(failed(format!("graph has {} rows, the shard {}", graph.len(), self.len())));
        }
        Ok(graph)
    }

    /// Opens `vectors.f32`, which must hold every row.
    fn open_full(&self) -> Result<File, Error> {
        let path = self.dir.join("vectors.f32");
        let failed = |message: String| Error::Index { path: path.display().to_string(), message };
        let full = File::open(&path).map_err(|e| failed(e.to_string()))?;
        let (found, expected) = (full.metadata().map_err(|e| failed(e.to_string()))?.len(), self.len() * self.dim * 4);
        if found != expected as u64 {
            return Err(failed(format!("{found} bytes, not {} vectors of {}", self.len(), self.dim)));
        }
        Ok(full)
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.points
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.points == 0
    }

    /// Its rows: those held, or in the archive tier those read from disk.
    pub fn rows(&self) -> Result<Cow<'_, Rows>, Error> {
        match &self.rows {
            Some(rows) => Ok(Cow::Borrowed(rows)),
            None => self.read_rows().map(Cow::Owned),
        }
    }

    /// Smallest and largest start time of its rows, in microseconds since the epoch.
    pub fn range(&self) -> (i64, i64) {
        self.range
    }

    /// Whether, in the archive tier, its filter lets `id` through (false in every other tier).
    pub(super) fn may_hold(&self, id: u64) -> bool {
        self.members.as_ref().is_some_and(|m| m.may_hold(id))
    }

    /// In the archive tier, the row holding `id`, if any, read from disk unless its filter rules `id` out (as it
    /// does for all but about one id in 2 000 it does not hold); `start`, when known, rules out a shard whose
    /// time range lies elsewhere without reading anything. `None` in every other tier: the space's map holds those.
    /// Gives the rows it read with the row found.
    pub fn archived_row(&self, id: u64, start: Option<i64>) -> Result<Option<(usize, Rows)>, Error> {
        let Some(members) = &self.members else { return Ok(None) };
        if start.is_some_and(|t| t < self.range.0 || t > self.range.1) || !members.may_hold(id) {
            return Ok(None);
        }
        let rows = self.read_rows()?;
        Ok(rows.ids.iter().position(|i| *i == id).map(|row| (row, rows)))
    }

    /// The tier it is in.
    pub fn tier(&self) -> Tier {
        self.vectors.tier()
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.bytes_in(self.tier())
    }

    /// Bytes it would hold in memory in `tier` (the graph's as written when it is not loaded). In the archive tier,
    /// what every shard holds whatever its size: its name, directory and time range.
    pub fn bytes_in(&self, tier: Tier) -> usize {
        let fixed = std::mem::size_of::<Shard>() + self.name.len() + self.dir.as_os_str().len();
        if tier == Tier::Archive {
            return fixed + Members::bytes_for(self.len());
        }
        let graph = match &self.graph {
            Some(graph) => graph.bytes(),
            None => fs::metadata(self.dir.join("graph.bin")).map_or(0, |m| m.len() as usize),
        };
        fixed + self.len() * ROW_BYTES + self.sensor_bytes + graph + tier.vector_bytes(self.len(), self.dim)
    }

    /// Moves the shard to `tier`: down by converting what it holds, up (or to f32) by reading its vectors back; to
    /// the archive tier by letting go of everything but its time range. Should a read fail, it stays where it was.
    pub fn set_tier(&mut self, tier: Tier) -> Result<(), Error> {
        if tier == self.tier() {
            return Ok(());
        }
        if tier == Tier::Archive {
            let members = match &self.rows {
                Some(rows) => Members::of(&rows.ids),
                None => Members::of(&self.read_rows()?.ids),
            };
            (self.graph, self.vectors, self.rows, self.full) = (None, Vectors::Archive, None, None);
            self.members = Some(members);
            return Ok(());
        }
        if self.tier() == Tier::Archive {
            // Everything is read before anything changes: a read that fails leaves it in the archive tier.
            let (rows, full, graph) = (self.read_rows()?, self.open_full()?, self.read_graph()?);
            let vectors = if tier == Tier::Disk { Vectors::Disk } else { self.read_vectors(&full, tier)? };
            (self.rows, self.full, self.graph, self.vectors) = (Some(rows), Some(full), Some(graph), vectors);
            self.members = None;
            return Ok(());
        }
        // What it holds goes first, and the new tier is built from the file as it is read: a move never holds two
        // representations of the vectors, nor the full-precision rows beside a quantized one.
        self.vectors = Vectors::Disk;
        if tier != Tier::Disk {
            let full = self.full.as_ref().expect("just opened");
            self.vectors = self.read_vectors(full, tier)?;
        }
        Ok(())
    }

    /// The vectors in `tier`'s representation, read from `vectors.f32` block by block.
    fn read_vectors(&self, full: &File, tier: Tier) -> Result<Vectors, Error> {
        let path = self.dir.join("vectors.f32");
        let failed = |message: String| Error::Index { path: path.display().to_string(), message };
        let expected = self.len() * self.dim * 4;
        // Blocks of whole rows, about 1 MiB.
        let block_rows = ((1 << 20) / (self.dim * 4)).max(1);
        let mut bytes = vec![0u8; block_rows * self.dim * 4];
        let mut values = vec![0.0f32; block_rows * self.dim];
        let pass = |sink: &mut dyn FnMut(&[f32])| -> std::io::Result<()> {
            let mut at = 0;
            while at < expected {
                let n = (expected - at).min(bytes.len());
                full.read_exact_at(&mut bytes[..n], at as u64)?;
                decode_f32(&bytes[..n], &mut values[..n / 4]);
                sink(&values[..n / 4]);
                at += n;
            }
            Ok(())
        };
        Vectors::from_blocks(self.len() * self.dim, self.dim, tier, pass).map_err(|e| failed(e.to_string()))
    }

    /// Full-precision vector of `row`, read from disk.
    pub fn full_row(&self, row: usize) -> Option<Vec<f32>> {
        let mut bytes = vec![0u8; self.dim * 4];
        let mut vector = vec![0.0f32; self.dim];
        self.with_full(|full| self.read_row(full, row, &mut bytes, &mut vector)).ok()?.then_some(vector)
    }

    /// Calls `visit(id, vector)` for each row, its full-precision vector read from disk (the file opened once).
    pub fn for_each_row(&self, visit: &mut dyn FnMut(u64, Vec<f32>)) -> Result<(), Error> {
        let ids = self.ids()?;
        let mut bytes = vec![0u8; self.dim * 4];
        self.with_full(|full| {
            for (row, id) in ids.iter().enumerate() {
                let mut vector = vec![0.0f32; self.dim];
                if self.read_row(full, row, &mut bytes, &mut vector) {
                    visit(*id, vector);
                }
            }
        })
    }

    /// Calls `read` with `vectors.f32`: the file held, or in the archive tier opened for it.
    fn with_full<T>(&self, read: impl FnOnce(&File) -> T) -> Result<T, Error> {
        match &self.full {
            Some(full) => Ok(read(full)),
            None => Ok(read(&self.open_full()?)),
        }
    }

    /// Reads `row`'s full-precision vector from `full` into `vector` (`dim` long) through `bytes` (`4 · dim` long);
    /// false when it cannot be read.
    fn read_row(&self, full: &File, row: usize, bytes: &mut [u8], vector: &mut [f32]) -> bool {
        if full.read_exact_at(bytes, (row * self.dim * 4) as u64).is_err() {
            return false;
        }
        decode_f32(bytes, vector);
        true
    }

    /// Whether any row could pass `filter`: by time range, and by sensors unless it is in the archive tier (which
    /// holds no names).
    pub fn may_admit(&self, filter: &Filter) -> bool {
        filter.overlaps(self.range)
            && (filter.sensors.is_empty()
                || self.rows.as_ref().is_none_or(|rows| rows.sensors.iter().any(|s| filter.sensors.contains(s))))
    }

    /// The `k` nearest rows to `query` (normalised) that pass `filter`: `(id, distance)`, nearest first. Quantized
    /// tiers find `k · oversample` candidates and rescore them at full precision (`oversample` 0: no rescoring); the
    /// disk tier compares at full precision, each row read from disk; the archive tier reads its graph and rows
    /// first, then searches as the disk tier does. An error only when the archive tier's files cannot be read.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        oversample: usize,
        filter: &Filter,
    ) -> Result<Vec<(u64, f32)>, Error> {
        if !self.may_admit(filter) {
            return Ok(Vec::new());
        }
        match (&self.graph, &self.rows, &self.full) {
            (Some(graph), Some(rows), Some(full)) => {
                Ok(self.search_in(graph, rows, full, query, k, ef, oversample, filter))
            }
            _ => {
                let (graph, full) = (self.read_graph()?, self.open_full()?);
                // Without a filter only the found rows' ids are wanted: not the sensors' names nor the start times.
                let rows = if filter.is_empty() {
                    Rows { ids: self.ids()?.into_owned(), sensor: Vec::new(), start: Vec::new(), sensors: Vec::new() }
                } else {
                    self.read_rows()?
                };
                Ok(self.search_in(&graph, &rows, &full, query, k, ef, oversample, filter))
            }
        }
    }

    /// [`Shard::search`] over `graph`, `rows` and `full`, held or just read.
    #[allow(clippy::too_many_arguments)]
    fn search_in(
        &self,
        graph: &Graph,
        rows: &Rows,
        full: &File,
        query: &[f32],
        k: usize,
        ef: usize,
        oversample: usize,
        filter: &Filter,
    ) -> Vec<(u64, f32)> {
        let on_disk = matches!(self.tier(), Tier::Disk | Tier::Archive);
        // The f32 tier walks its rows' codes and measures every candidate it found again, from memory.
        let in_memory = self.tier() == Tier::F32;
        let rescore = !on_disk && !in_memory && oversample > 0;
        let want = if rescore {
            k * oversample
        } else if in_memory {
            // Codes rank the candidates near the k-th approximately: twice k are measured again.
            ef.max(2 * k)
        } else {
            k
        };
        let prepared = self.vectors.prepare(query);
        // Buffers for the rows read from disk, made only for the disk and archive tiers.
        let row_buffers =
            RefCell::new(if on_disk { (vec![0u8; self.dim * 4], vec![0.0f32; self.dim]) } else { Default::default() });
        let distance_to = |row: u32| {
            if on_disk {
                let (bytes, vector) = &mut *row_buffers.borrow_mut();
                if self.read_row(full, row as usize, bytes, vector) { distance(query, vector) } else { f32::MAX }
            } else {
                self.vectors.distance(&prepared, row as usize, self.dim)
            }
        };
        let prefetch = |row: u32| self.vectors.prefetch(row as usize, self.dim);
        let found = if filter.is_empty() {
            graph.search_prefetching(distance_to, prefetch, want, ef.max(want), None)
        } else {
            let admitted: Vec<u32> = (0..self.len()).filter(|r| rows.admits(filter, *r)).map(|r| r as u32).collect();
            if admitted.len() <= (ef.max(want) * 8).max(self.len() / 20) {
                // Few rows pass: comparing with each is cheaper and exact (at full precision in the f32 tier).
                let compared = |r: u32| {
                    let exact = in_memory.then(|| self.vectors.exact(&prepared, r as usize, self.dim)).flatten();
                    (r, exact.unwrap_or_else(|| distance_to(r)))
                };
                let mut found: Vec<(u32, f32)> = admitted.into_iter().map(compared).collect();
                found.sort_by(|a, b| a.1.total_cmp(&b.1));
                found.truncate(want);
                found
            } else {
                let accept = |row: u32| rows.admits(filter, row as usize);
                graph.search_prefetching(distance_to, prefetch, want, ef.max(want), Some(&accept))
            }
        };
        let mut found: Vec<(u64, f32)> = if in_memory {
            let exact = |(row, approximate): (u32, f32)| {
                (rows.ids[row as usize], self.vectors.exact(&prepared, row as usize, self.dim).unwrap_or(approximate))
            };
            found.into_iter().map(exact).collect()
        } else if rescore {
            found
                .into_iter()
                .map(|(row, approximate)| {
                    let exact = self.full_row(row as usize).map_or(approximate, |v| distance(query, &v));
                    (rows.ids[row as usize], exact)
                })
                .collect()
        } else {
            found.into_iter().map(|(row, d)| (rows.ids[row as usize], d)).collect()
        };
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        found.truncate(k);
        found
    }

    /// Records that a query's answer drew on this shard.
    pub fn touch(&self, now: u64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_access.fetch_max(now, Ordering::Relaxed);
    }

    /// Answers drawn on it since [`Shard::reset_hits`].
    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Starts counting hits afresh.
    pub fn reset_hits(&self) {
        self.hits.store(0, Ordering::Relaxed);
    }

    /// The later of its sealing and its last use (seconds since the epoch): its age counts from there.
    pub fn last_used(&self) -> u64 {
        self.last_access.load(Ordering::Relaxed).max(self.sealed_at)
    }

    /// Marks it used at `now` (a promotion).
    pub fn used(&self, now: u64) {
        self.last_access.fetch_max(now, Ordering::Relaxed);
    }
}

/// Which ids an archive-tier shard holds, as a Bloom filter: 16 bits an id and 11 probes, so that about one id in
/// 2 000 it does not hold passes (and costs a read of its rows), and none it holds is missed.
struct Members {
    bits: Vec<u64>,
}

impl Members {
    /// Probes per id.
    const PROBES: u64 = 11;

    /// Words of bits for `ids` ids.
    fn words_for(ids: usize) -> usize {
        (ids * 16).div_ceil(64).max(1)
    }

    /// Bytes held for `ids` ids.
    fn bytes_for(ids: usize) -> usize {
        Members::words_for(ids) * 8 + std::mem::size_of::<Members>()
    }

    /// The filter of `ids`.
    fn of(ids: &[u64]) -> Members {
        let mut members = Members { bits: vec![0; Members::words_for(ids.len())] };
        for id in ids {
            for bit in members.probes(*id) {
                members.bits[bit / 64] |= 1 << (bit % 64);
            }
        }
        members
    }

    /// Whether `id` may be one of its ids.
    fn may_hold(&self, id: u64) -> bool {
        self.probes(id).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// The bits `id` sets: double hashing over two halves of a 64-bit mix of it (ids are hashes already, but of
    /// text the sender chose).
    fn probes(&self, id: u64) -> impl Iterator<Item = usize> + use<> {
        let mixed = splitmix64(id);
        let (h1, h2) = (mixed >> 32, (mixed & 0xffff_ffff) | 1);
        let bits = self.bits.len() as u64 * 64;
        (0..Members::PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }
}

/// A 64-bit mix (the finaliser of SplitMix64).
fn splitmix64(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Reads a shard's `shard.json` from its directory `dir`.
fn read_description(dir: &Path) -> Result<Description, Error> {
    fs::read(dir.join("shard.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| Error::Index { path: dir.display().to_string(), message: format!("cannot read shard.json: {e}") })
}

/// Bytes `sensors` take in memory.
fn sensor_bytes(sensors: &[String]) -> usize {
    sensors.iter().map(|s| s.len() + 24).sum()
}

/// Decodes little-endian f32s from `bytes` into `values` (a quarter as long).
fn decode_f32(bytes: &[u8], values: &mut [f32]) {
    for (x, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
