//! A sealed shard: an immutable HNSW graph over a run of inserted segments, with its vectors in one memory tier.
//!
//! On disk a shard is a directory written once: `shard.json` (size, time range, sensors), `rows.bin` (id, sensor and
//! start time per row), `graph.bin` (the frozen layers) and `vectors.f32` (full precision). In memory it holds its
//! rows always, and its graph and vectors in the tier it is in: f32, f16 or int8 (see [`super::kernels`]), the graph
//! alone (disk tier: each distance reads its row from `vectors.f32`), or neither (archive tier). Full-precision
//! vectors stay on disk for rescoring quantized candidates, for the disk tier and for promotion.
//!
//! A shard is sealed from the open shard (`build.rs`, [`OpenShard::freeze`](super::build::OpenShard::freeze)), named
//! with its tier in the space's manifest (`manifest.rs`), and moved between tiers as the policy says (`policy.rs`).

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::kernels::{Tier, Vectors, distance};
use super::point::Filter;
use crate::Error;

/// Bytes per row of [`Rows`] in memory: id, sensor number and start time.
const ROW_BYTES: usize = 8 + 4 + 8;

/// Where and when each row was recorded.
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
    rows: Rows,
    range: (i64, i64),
    graph: Option<Graph>,
    vectors: Vectors,
    full: File,
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
            range,
            rows,
            graph: Some(graph),
            vectors: Vectors::Disk,
            full,
            sealed_at: now,
            last_access: AtomicU64::new(now),
            hits: AtomicU32::new(0),
        })
    }

    /// Opens shard `name` under `space_dir` into `tier`.
    pub fn open(space_dir: &Path, name: &str, tier: Tier, last_access: u64, dim: usize) -> Result<Shard, Error> {
        let dir = space_dir.join(name);
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let description: Description = fs::read(dir.join("shard.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| failed(format!("cannot read shard.json: {e}")))?;
        if description.dim != dim {
            return Err(failed(format!(
                "shard holds {}-dimensional vectors but the model produces {dim}: it belongs to another model",
                description.dim
            )));
        }
        let bytes = fs::read(dir.join("rows.bin")).map_err(|e| failed(format!("cannot read rows.bin: {e}")))?;
        if bytes.len() != description.points * ROW_BYTES {
            return Err(failed(format!("rows.bin holds {} bytes, not {} rows", bytes.len(), description.points)));
        }
        let mut rows = Rows {
            ids: Vec::with_capacity(description.points),
            sensor: Vec::with_capacity(description.points),
            start: Vec::with_capacity(description.points),
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
        let full = File::open(dir.join("vectors.f32")).map_err(|e| failed(format!("cannot open vectors.f32: {e}")))?;
        let mut shard = Shard {
            name: name.to_owned(),
            dir,
            dim,
            range: (description.from_micros, description.to_micros),
            rows,
            graph: None,
            vectors: Vectors::Archive,
            full,
            sealed_at: description.sealed_at,
            last_access: AtomicU64::new(last_access),
            hits: AtomicU32::new(0),
        };
        shard.set_tier(tier)?;
        Ok(shard)
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.rows.ids.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.ids.is_empty()
    }

    /// Its rows.
    pub fn rows(&self) -> &Rows {
        &self.rows
    }

    /// The tier it is in.
    pub fn tier(&self) -> Tier {
        self.vectors.tier()
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.bytes_in(self.tier())
    }

    /// Bytes it would hold in memory in `tier` (the graph's as written when it is not loaded).
    pub fn bytes_in(&self, tier: Tier) -> usize {
        let sensors: usize = self.rows.sensors.iter().map(|s| s.len() + 24).sum();
        let graph = match (&self.graph, tier) {
            (_, Tier::Archive) => 0,
            (Some(graph), _) => graph.bytes(),
            (None, _) => fs::metadata(self.dir.join("graph.bin")).map_or(0, |m| m.len() as usize),
        };
        self.len() * ROW_BYTES + sensors + graph + tier.vector_bytes(self.len(), self.dim)
    }

    /// Moves the shard to `tier`: down by converting what it holds, up (or to f32) by reading its vectors back.
    pub fn set_tier(&mut self, tier: Tier) -> Result<(), Error> {
        if tier == self.tier() {
            return Ok(());
        }
        if tier == Tier::Archive {
            (self.graph, self.vectors) = (None, Vectors::Archive);
            return Ok(());
        }
        if self.graph.is_none() {
            let path = self.dir.join("graph.bin");
            let graph = File::open(&path)
                .and_then(|f| Graph::read(&mut BufReader::new(f)))
                .map_err(|e| Error::Index { path: path.display().to_string(), message: e.to_string() })?;
            if graph.len() != self.len() {
                return Err(Error::Index {
                    path: path.display().to_string(),
                    message: format!("graph has {} rows, the shard {}", graph.len(), self.len()),
                });
            }
            self.graph = Some(graph);
        }
        // What it holds goes first, and the new tier is built from the file as it is read: a move never holds two
        // representations of the vectors, nor the full-precision rows beside a quantized one.
        self.vectors = Vectors::Disk;
        if tier != Tier::Disk {
            self.vectors = self.read_vectors(tier)?;
        }
        Ok(())
    }

    /// The vectors in `tier`'s representation, read from `vectors.f32` block by block.
    fn read_vectors(&self, tier: Tier) -> Result<Vectors, Error> {
        let path = self.dir.join("vectors.f32");
        let failed = |message: String| Error::Index { path: path.display().to_string(), message };
        let expected = self.len() * self.dim * 4;
        let found = self.full.metadata().map_err(|e| failed(e.to_string()))?.len();
        if found != expected as u64 {
            return Err(failed(format!("{found} bytes, not {} vectors of {}", self.len(), self.dim)));
        }
        // Blocks of whole rows, about 1 MiB.
        let block_rows = ((1 << 20) / (self.dim * 4)).max(1);
        let mut bytes = vec![0u8; block_rows * self.dim * 4];
        let mut values = vec![0.0f32; block_rows * self.dim];
        let pass = |sink: &mut dyn FnMut(&[f32])| -> std::io::Result<()> {
            let mut at = 0;
            while at < expected {
                let n = (expected - at).min(bytes.len());
                self.full.read_exact_at(&mut bytes[..n], at as u64)?;
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
        self.read_row(row, &mut bytes, &mut vector).then_some(vector)
    }

    /// Reads `row`'s full-precision vector from disk into `vector` (`dim` long) through `bytes` (`4 · dim` long);
    /// false when it cannot be read.
    fn read_row(&self, row: usize, bytes: &mut [u8], vector: &mut [f32]) -> bool {
        if self.full.read_exact_at(bytes, (row * self.dim * 4) as u64).is_err() {
            return false;
        }
        decode_f32(bytes, vector);
        true
    }

    /// Whether any row could pass `filter` (by time range and sensors).
    pub fn may_admit(&self, filter: &Filter) -> bool {
        filter.overlaps(self.range)
            && (filter.sensors.is_empty() || self.rows.sensors.iter().any(|s| filter.sensors.contains(s)))
    }

    /// The `k` nearest rows to `query` (normalised) that pass `filter`: `(id, distance)`, nearest first. Quantized
    /// tiers find `k · oversample` candidates and rescore them at full precision (`oversample` 0: no rescoring); the
    /// disk tier compares at full precision, each row read from disk. Nothing in the archive tier.
    pub fn search(&self, query: &[f32], k: usize, ef: usize, oversample: usize, filter: &Filter) -> Vec<(u64, f32)> {
        let Some(graph) = &self.graph else { return Vec::new() };
        if !self.may_admit(filter) {
            return Vec::new();
        }
        let on_disk = self.tier() == Tier::Disk;
        let rescore = !matches!(self.tier(), Tier::F32 | Tier::Disk) && oversample > 0;
        let want = if rescore { k * oversample } else { k };
        let prepared = self.vectors.prepare(query);
        // Buffers for the rows read from disk, made only for the disk tier.
        let row_buffers =
            RefCell::new(if on_disk { (vec![0u8; self.dim * 4], vec![0.0f32; self.dim]) } else { Default::default() });
        let distance_to = |row: u32| {
            if on_disk {
                let (bytes, vector) = &mut *row_buffers.borrow_mut();
                if self.read_row(row as usize, bytes, vector) { distance(query, vector) } else { f32::MAX }
            } else {
                self.vectors.distance(&prepared, row as usize, self.dim)
            }
        };
        let found = if filter.is_empty() {
            graph.search(distance_to, want, ef.max(want), None)
        } else {
            let admitted: Vec<u32> =
                (0..self.len()).filter(|r| self.rows.admits(filter, *r)).map(|r| r as u32).collect();
            if admitted.len() <= (ef.max(want) * 8).max(self.len() / 20) {
                // Few rows pass: comparing with each is cheaper and exact.
                let mut found: Vec<(u32, f32)> = admitted.into_iter().map(|r| (r, distance_to(r))).collect();
                found.sort_by(|a, b| a.1.total_cmp(&b.1));
                found.truncate(want);
                found
            } else {
                let accept = |row: u32| self.rows.admits(filter, row as usize);
                graph.search(distance_to, want, ef.max(want), Some(&accept))
            }
        };
        let mut found: Vec<(u64, f32)> = if rescore {
            found
                .into_iter()
                .map(|(row, approximate)| {
                    let exact = self.full_row(row as usize).map_or(approximate, |v| distance(query, &v));
                    (self.rows.ids[row as usize], exact)
                })
                .collect()
        } else {
            found.into_iter().map(|(row, d)| (self.rows.ids[row as usize], d)).collect()
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

/// Decodes little-endian f32s from `bytes` into `values` (a quarter as long).
fn decode_f32(bytes: &[u8], values: &mut [f32]) {
    for (x, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
