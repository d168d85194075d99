//! chorus's own HNSW graph: parallel inserts over flat arrays, into a graph that grows by rows while it is searched,
//! frozen into the [`Graph`] sealed shards search.
//!
//! hnsw_rs spends a third of a build in bookkeeping — a lock and an `Arc` per neighbour list, a hash set of the points
//! visited, heaps of wrapped points. Here layer 0's neighbour lists are arrays of atomics (per row a count and `2M`
//! slots), a row's upper layers a list of `M + 1` slots per layer, the rows visited generation counters kept per
//! thread, and distances the SimSIMD kernel over the rows' vectors, kept flat in chunks of [`CHUNK`] rows. Rows are
//! inserted in parallel (rayon), as in Malkov and Yashunin's algorithm with its neighbour-selection heuristic
//! (hnswlib's `getNeighborsByHeuristic2`): a row's lists change under its own lock and are read without one. A count
//! is stored after its slots (release) and read before them (acquire), so a reader never reads a slot not yet
//! written; a list being chosen again may show a mix of its old and new rows, every one a row of that layer, which is
//! all a search needs. A row becomes reachable only once every one of its lists is set.
//!
//! A [`Growing`] graph takes rows in two steps. [`Growing::push`] appends a row's vector (under `&mut`: the space's
//! write lock); it is searched at once, by an exact scan of the rows not yet linked — the write buffer.
//! [`Growing::link`] then links the oldest of those rows into the graph (under `&`: beside searches, off the thread
//! that pushed them), in order, so the linked rows are always a prefix. A search walks the graph and scans the
//! buffer, so it sees every row pushed before it, linked or not.
//!
//! A row's level comes from a hash of its number, so the layers are the same in every build of the same rows; the
//! links depend on the order the threads take the rows in.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicUsize};

use rayon::prelude::*;

use super::graph::{Distance, Graph};
use simsimd::SpatialSimilarity;

use super::kernels::{distance, prefetch, quantize_row};

/// Layers at most (hnsw_rs's count, so graphs of both builders have the same shape).
const MAX_LEVEL: usize = 15;
/// Rows per chunk of storage: a graph's memory grows a chunk at a time, never by copying what it holds.
const CHUNK: usize = 1024;
/// Buffered rows a search scans on one thread; more are scanned in parallel.
const PARALLEL_SCAN: usize = 4096;

/// Builds the graph of `vectors` (`dim` values a row, L2-normalised) with `m` links a row on the upper layers and
/// `2m` on layer 0, inserting with a beam of `ef_construction`, on rayon's threads.
pub fn build(vectors: &[f32], dim: usize, m: usize, ef_construction: usize) -> Graph {
    let mut graph = Growing::new(dim, m, ef_construction, true);
    for vector in vectors.chunks_exact(dim.max(1)) {
        graph.push(vector);
    }
    graph.link_all();
    graph.freeze()
}

/// The rows a search has visited: a generation number per row, this search's the current one.
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    generation: u32,
}

impl Visited {
    /// Starts a search over `rows` rows.
    fn start(&mut self, rows: usize) {
        if self.marks.len() < rows {
            self.marks.resize(rows, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.generation = 1;
        }
    }

    /// Marks `row`; whether it was not marked yet.
    fn visit(&mut self, row: u32) -> bool {
        let mark = &mut self.marks[row as usize];
        let fresh = *mark != self.generation;
        *mark = self.generation;
        fresh
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// What a distance is taken from: a query's full-precision vector or its int8 codes (searches), or a row (inserts:
/// its codes, or its vector without them).
#[derive(Clone, Copy)]
enum Probe<'a> {
    Vector(&'a [f32]),
    /// A query's int8 codes and the value of their step.
    Codes(&'a [i8], f32),
    Row(u32),
}

/// [`CHUNK`] rows of a [`Growing`] graph.
struct Chunk {
    /// The rows' vectors, row after row (room for [`CHUNK`] made when the chunk is).
    vectors: Vec<f32>,
    /// The rows' vectors as int8 codes, each row scaled by its own largest component: what inserts compare.
    codes: Vec<i8>,
    /// Per row, the value of one step of its codes.
    scales: Vec<f32>,
    levels: Vec<u8>,
    /// Layer 0: row `r`'s count at `r × (m0 + 1)`, its neighbours after it.
    layer0: Box<[AtomicU32]>,
    /// Layers 1 and up: per row, `level × (m + 1)` slots — for each layer from 1, a count and its neighbours.
    upper: Vec<Box<[AtomicU32]>>,
    locks: Box<[Mutex<()>]>,
}

/// An HNSW graph that grows by rows: see the module's documentation.
pub(super) struct Growing {
    dim: usize,
    /// Inserts compare int8 codes (kept beside the vectors), not the vectors.
    quantized: bool,
    m: usize,
    m0: usize,
    ef: usize,
    scale: f64,
    chunks: Vec<Chunk>,
    rows: usize,
    /// Rows `0..linked` are in the graph; the rest are the buffer.
    linked: AtomicUsize,
    /// Held by the thread linking rows: one at a time, so the linked rows stay a prefix.
    linking: Mutex<()>,
    /// The entry row: the first row of the highest level.
    entry: Mutex<Option<u32>>,
}

fn slots(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

impl Growing {
    /// An empty graph of `dim`-long rows with `m` links a row on the upper layers and `2m` on layer 0, inserting with
    /// a beam of `ef_construction`.
    pub(super) fn new(dim: usize, m: usize, ef_construction: usize, quantized: bool) -> Growing {
        let m = m.max(2);
        Growing {
            dim,
            quantized,
            m,
            m0: 2 * m,
            ef: ef_construction.max(m),
            scale: 1.0 / (m as f64).ln(),
            chunks: Vec::new(),
            rows: 0,
            linked: AtomicUsize::new(0),
            linking: Mutex::new(()),
            entry: Mutex::new(None),
        }
    }

    /// Rows pushed.
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    /// Rows linked into the graph: the first `linked()`; the others are searched by a scan.
    pub(super) fn linked(&self) -> usize {
        self.linked.load(Acquire)
    }

    /// Appends a row (`dim` values, L2-normalised), searched at once; [`Growing::link`] links it into the graph.
    pub(super) fn push(&mut self, vector: &[f32]) -> u32 {
        let level = level(self.rows as u64, self.scale);
        self.push_at(vector, level)
    }

    fn push_at(&mut self, vector: &[f32], level: u8) -> u32 {
        assert_eq!(vector.len(), self.dim, "a row of the wrong length");
        if self.rows.is_multiple_of(CHUNK) {
            self.chunks.push(Chunk {
                vectors: Vec::with_capacity(CHUNK * self.dim),
                codes: Vec::with_capacity(if self.quantized { CHUNK * self.dim } else { 0 }),
                scales: Vec::with_capacity(CHUNK),
                levels: Vec::with_capacity(CHUNK),
                layer0: slots(CHUNK * (self.m0 + 1)),
                upper: Vec::with_capacity(CHUNK),
                locks: (0..CHUNK).map(|_| Mutex::new(())).collect(),
            });
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        chunk.vectors.extend_from_slice(vector);
        if self.quantized {
            let (codes, step) = quantize_row(vector);
            chunk.codes.extend(codes);
            chunk.scales.push(step);
        }
        chunk.levels.push(level);
        chunk.upper.push(slots(usize::from(level) * (self.m + 1)));
        self.rows += 1;
        (self.rows - 1) as u32
    }

    /// Row `row`'s vector.
    pub(super) fn vector(&self, row: u32) -> &[f32] {
        let (chunk, at) = (row as usize / CHUNK, row as usize % CHUNK * self.dim);
        &self.chunks[chunk].vectors[at..at + self.dim]
    }

    fn level(&self, row: u32) -> usize {
        usize::from(self.chunks[row as usize / CHUNK].levels[row as usize % CHUNK])
    }

    fn lock(&self, row: u32) -> std::sync::MutexGuard<'_, ()> {
        self.chunks[row as usize / CHUNK].locks[row as usize % CHUNK].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Row `row`'s codes and the value of their step.
    fn codes(&self, row: u32) -> (&[i8], f32) {
        let chunk = &self.chunks[row as usize / CHUNK];
        let at = row as usize % CHUNK;
        (&chunk.codes[at * self.dim..(at + 1) * self.dim], chunk.scales[at])
    }

    /// The full-precision distance between `query` and row `row`.
    fn exact(&self, query: &[f32], row: u32) -> f32 {
        distance(query, self.vector(row))
    }

    /// Starts loading what [`Growing::distance`] will read of row `row`.
    fn prefetch(&self, probe: Probe<'_>, row: u32) {
        match probe {
            Probe::Codes(..) => prefetch(self.codes(row).0),
            Probe::Row(_) if self.quantized => prefetch(self.codes(row).0),
            _ => prefetch(self.vector(row)),
        }
    }

    fn distance(&self, probe: Probe<'_>, row: u32) -> f32 {
        match probe {
            Probe::Vector(query) => distance(query, self.vector(row)),
            Probe::Row(from) if !self.quantized => distance(self.vector(from), self.vector(row)),
            Probe::Row(from) => {
                let (codes, step) = self.codes(from);
                self.distance(Probe::Codes(codes, step), row)
            }
            Probe::Codes(a, sa) => {
                let (b, sb) = self.codes(row);
                i8::dot(a, b).map_or(f32::MAX, |d| 1.0 - d as f32 * sa * sb)
            }
        }
    }

    /// Row `row`'s slots on `layer`: its count, then room for its neighbours.
    fn slots(&self, row: u32, layer: usize) -> &[AtomicU32] {
        let chunk = &self.chunks[row as usize / CHUNK];
        let row = row as usize % CHUNK;
        if layer == 0 {
            let at = row * (self.m0 + 1);
            &chunk.layer0[at..at + self.m0 + 1]
        } else {
            let at = (layer - 1) * (self.m + 1);
            &chunk.upper[row][at..at + self.m + 1]
        }
    }

    /// Row `row`'s neighbours on `layer`, into `out`.
    fn neighbours(&self, row: u32, layer: usize, out: &mut Vec<u32>) {
        let slots = self.slots(row, layer);
        let count = (slots[0].load(Acquire) as usize).min(slots.len() - 1);
        out.clear();
        out.extend(slots[1..=count].iter().map(|s| s.load(Relaxed)));
    }

    /// Links up to `most` of the buffered rows into the graph, oldest first, in parallel; returns how many. Returns 0
    /// at once when another thread is linking.
    pub(super) fn link(&self, most: usize) -> usize {
        // A panic in an earlier batch leaves its rows unlinked and the prefix where it was: linking again from there
        // is sound (a row's lists are set again, its back-links kept once).
        let _linking = match self.linking.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return 0,
        };
        let from = self.linked.load(Acquire);
        let to = from.saturating_add(most).min(self.rows);
        if from >= to {
            return 0;
        }
        let mut next = from;
        if self.entry.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            // The first row alone: it is the entry every other insert starts from.
            self.insert(next as u32);
            next += 1;
        }
        (next..to).into_par_iter().for_each(|row| self.insert(row as u32));
        self.linked.store(to, Release);
        to - from
    }

    /// Links every buffered row.
    pub(super) fn link_all(&mut self) {
        self.link(usize::MAX);
    }

    /// The `k` rows nearest `query` (L2-normalised) among those `accept` lets through, with their distances, nearest
    /// first: the graph searched with a beam of `ef`, the buffered rows compared with each.
    pub(super) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Vec<(u32, f32)> {
        if k == 0 {
            return Vec::new();
        }
        let linked = self.linked();
        let entry = *self.entry.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(u32, f32)> = match entry.filter(|_| linked > 0) {
            None => Vec::new(),
            Some(start) => {
                // With codes, the walk compares the query's codes, and what it finds is measured again at full
                // precision: the distances returned are exact.
                let (codes, step) = if self.quantized { quantize_row(query) } else { (Vec::new(), 1.0) };
                let probe = if self.quantized { Probe::Codes(&codes, step) } else { Probe::Vector(query) };
                let nearest = self.descend(probe, start, 1);
                VISITED.with(|visited| {
                    // Codes rank the candidates near the k-th approximately: twice k are measured again.
                    let beam = if self.quantized { ef.max(2 * k) } else { ef.max(k) };
                    let found = self.search_layer(probe, &[nearest], 0, beam, accept, &mut visited.borrow_mut());
                    let exact = |(d, row): (f32, u32)| (row, if self.quantized { self.exact(query, row) } else { d });
                    found.into_iter().map(exact).collect()
                })
            }
        };
        let accepted = |row: &u32| accept.is_none_or(|f| f(*row));
        let compared = |row: u32| (row, self.exact(query, row));
        let buffer = linked as u32..self.rows as u32;
        if buffer.len() > PARALLEL_SCAN {
            let scanned: Vec<(u32, f32)> = buffer.into_par_iter().filter(accepted).map(compared).collect();
            found.extend(scanned);
        } else {
            found.extend(buffer.filter(accepted).map(compared));
        }
        // A row being linked may be reached by the walk and scanned as well.
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.dedup_by_key(|(row, _)| *row);
        found.truncate(k);
        found
    }

    /// From `start`, the nearest row greedy steps reach on the layers from the top down to `bottom`, with its
    /// distance.
    fn descend(&self, query: Probe<'_>, start: u32, bottom: usize) -> (f32, u32) {
        let mut nearest = (self.distance(query, start), start);
        let mut links = Vec::with_capacity(self.m0);
        for layer in (bottom..=self.level(start)).rev() {
            loop {
                let mut moved = false;
                self.neighbours(nearest.1, layer, &mut links);
                for &next in &links {
                    let d = self.distance(query, next);
                    if d < nearest.0 {
                        (nearest, moved) = ((d, next), true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        nearest
    }

    fn insert(&self, row: u32) {
        let level = self.level(row);
        let query = Probe::Row(row);
        let mut entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(start) = *entry else {
            *entry = Some(row);
            return;
        };
        let top = self.level(start);
        // A row above the top holds the entry until it is linked in: one new top at a time.
        let held = if level > top {
            Some(entry)
        } else {
            drop(entry);
            None
        };
        let nearest = self.descend(query, start, level + 1);
        // Every list of the row is set before any row links to it: reached earlier, a row with an empty list on a
        // lower layer would be a dead end for the inserts that find it, and their links to it would be overwritten.
        let mut entries = vec![nearest];
        let mut chosen_by_layer = Vec::with_capacity(level.min(top) + 1);
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            for layer in (0..=level.min(top)).rev() {
                let found = self.search_layer(query, &entries, layer, self.ef, None, &mut visited);
                let chosen = self.select(&found, self.m);
                self.set(row, layer, &chosen);
                chosen_by_layer.push((layer, chosen));
                entries = found;
            }
        });
        for (layer, chosen) in chosen_by_layer {
            let room = if layer == 0 { self.m0 } else { self.m };
            for (d, other) in chosen {
                self.link_back(other, row, d, layer, room);
            }
        }
        if let Some(mut entry) = held {
            *entry = Some(row);
        }
    }

    /// The `ef` rows nearest `query` on `layer` reachable from `entries` that `accept` lets through (every row walked,
    /// only those kept), nearest first.
    fn search_layer(
        &self,
        query: Probe<'_>,
        entries: &[(f32, u32)],
        layer: usize,
        ef: usize,
        accept: Option<&(dyn Fn(u32) -> bool + Sync)>,
        visited: &mut Visited,
    ) -> Vec<(f32, u32)> {
        let accepted = |row: u32| accept.is_none_or(|f| f(row));
        visited.start(self.rows);
        let mut candidates = BinaryHeap::new();
        let mut found: BinaryHeap<(Distance, u32)> = BinaryHeap::with_capacity(ef + 1);
        for &(d, row) in entries {
            if visited.visit(row) {
                candidates.push(Reverse((Distance(d), row)));
                if accepted(row) {
                    found.push((Distance(d), row));
                }
            }
        }
        while found.len() > ef {
            found.pop();
        }
        let mut links = Vec::with_capacity(self.m0);
        while let Some(Reverse((Distance(d), row))) = candidates.pop() {
            if found.len() >= ef && found.peek().is_some_and(|(worst, _)| d > worst.0) {
                break;
            }
            self.neighbours(row, layer, &mut links);
            links.retain(|next| visited.visit(*next));
            for (i, &next) in links.iter().enumerate() {
                // The next row's data is on its way while this one is compared.
                if let Some(&after) = links.get(i + 1) {
                    self.prefetch(query, after);
                }
                let d = self.distance(query, next);
                if found.len() < ef || found.peek().is_some_and(|(worst, _)| d < worst.0) {
                    candidates.push(Reverse((Distance(d), next)));
                    if accepted(next) {
                        found.push((Distance(d), next));
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
            }
        }
        found.into_sorted_vec().into_iter().map(|(d, row)| (d.0, row)).collect()
    }

    /// Up to `m` of `candidates` (nearest first) by the heuristic: a candidate is kept when it is nearer to the
    /// query than to every candidate kept before it, so the links spread in every direction. Fewer than `m` are all
    /// kept, as hnswlib keeps them.
    fn select(&self, candidates: &[(f32, u32)], m: usize) -> Vec<(f32, u32)> {
        if candidates.len() < m {
            return candidates.to_vec();
        }
        let mut chosen: Vec<(f32, u32)> = Vec::with_capacity(m);
        for &(d, row) in candidates {
            if chosen.len() >= m {
                break;
            }
            if chosen.iter().all(|&(_, kept)| self.distance(Probe::Row(row), kept) >= d) {
                chosen.push((d, row));
            }
        }
        chosen
    }

    /// Sets `row`'s neighbours on `layer`.
    fn set(&self, row: u32, layer: usize, chosen: &[(f32, u32)]) {
        let _lock = self.lock(row);
        let slots = self.slots(row, layer);
        for (slot, (_, neighbour)) in slots[1..].iter().zip(chosen) {
            slot.store(*neighbour, Relaxed);
        }
        slots[0].store(chosen.len().min(slots.len() - 1) as u32, Release);
    }

    /// Links `other` back to `row` (at distance `d`) on `layer`: appended while `other` has room, otherwise its
    /// neighbours and `row` chosen again by the heuristic.
    fn link_back(&self, other: u32, row: u32, d: f32, layer: usize, room: usize) {
        let _lock = self.lock(other);
        let slots = self.slots(other, layer);
        let count = (slots[0].load(Acquire) as usize).min(room);
        if slots[1..=count].iter().any(|s| s.load(Relaxed) == row) {
            return;
        }
        if count < room {
            slots[1 + count].store(row, Relaxed);
            slots[0].store(count as u32 + 1, Release);
            return;
        }
        let from = Probe::Row(other);
        let mut candidates: Vec<(f32, u32)> = slots[1..=count]
            .iter()
            .map(|s| s.load(Relaxed))
            .map(|n| (self.distance(from, n), n))
            .chain(std::iter::once((d, row)))
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let chosen = self.select(&candidates, room);
        for (slot, (_, neighbour)) in slots[1..].iter().zip(&chosen) {
            slot.store(*neighbour, Relaxed);
        }
        slots[0].store(chosen.len() as u32, Release);
    }

    /// The graph of the linked rows, frozen (rows not linked yet are left out; under `&mut`, no row is being linked,
    /// so no list names one).
    pub(super) fn freeze(&self) -> Graph {
        let rows = self.linked();
        let entry = self.entry.lock().unwrap_or_else(|p| p.into_inner()).filter(|_| rows > 0).unwrap_or(0);
        let top = if rows == 0 { 0 } else { self.level(entry) };
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut links = Vec::with_capacity(rows * self.m0);
        offsets.push(0);
        let read = |slots: &[AtomicU32]| -> Vec<u32> {
            let count = (slots[0].load(Acquire) as usize).min(slots.len() - 1);
            slots[1..=count].iter().map(|s| s.load(Relaxed)).filter(|r| (*r as usize) < rows).collect()
        };
        for row in 0..rows as u32 {
            links.extend(read(self.slots(row, 0)));
            offsets.push(links.len() as u32);
        }
        let mut upper: Vec<HashMap<u32, Vec<u32>>> = vec![HashMap::new(); top];
        for row in 0..rows as u32 {
            for layer in 1..=self.level(row).min(top) {
                upper[layer - 1].insert(row, read(self.slots(row, layer)));
            }
        }
        Graph::from_parts(entry, offsets, links, upper)
    }

    /// The graph `graph` froze, its rows' vectors `vectors` (`dim` values a row), all linked, growing from there.
    pub(super) fn from_graph(
        graph: &Graph,
        vectors: &[f32],
        dim: usize,
        m: usize,
        ef_construction: usize,
        quantized: bool,
    ) -> Growing {
        let mut growing = Growing::new(dim, m, ef_construction, quantized);
        let lists: Vec<Vec<(usize, Vec<u32>)>> = (0..graph.len() as u32).map(|row| graph.neighbours(row)).collect();
        let levels: Vec<usize> =
            lists.iter().map(|layers| layers.iter().map(|(l, _)| *l).max().unwrap_or(0).min(MAX_LEVEL)).collect();
        for (vector, level) in vectors.chunks_exact(dim.max(1)).zip(&levels) {
            growing.push_at(vector, *level as u8);
        }
        for (row, layers) in lists.iter().enumerate() {
            for (layer, list) in layers.iter().filter(|(layer, _)| *layer <= MAX_LEVEL) {
                // A damaged file may name, on a layer, a row that does not reach it: that link is left out.
                let list: Vec<(f32, u32)> =
                    list.iter().filter(|n| levels[**n as usize] >= *layer).map(|n| (0.0, *n)).collect();
                growing.set(row as u32, *layer, &list);
            }
        }
        if growing.rows > 0 {
            *growing.entry.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(graph.entry());
        }
        growing.linked = AtomicUsize::new(growing.rows);
        growing
    }

    /// Bytes held: the rows' vectors (and codes) and lists, and each chunk's room.
    pub(super) fn bytes(&self) -> usize {
        let per_chunk = CHUNK * ((self.m0 + 1) * 4 + std::mem::size_of::<Mutex<()>>() + 1 + 16);
        let upper: usize = self.chunks.iter().flat_map(|c| c.upper.iter()).map(|u| u.len() * 4).sum();
        self.rows * row_bytes(self.dim, self.quantized) + self.chunks.len() * per_chunk + upper
    }

    /// Bytes a graph of `rows` rows of `dim` values with `m` links holds, about (upper layers at their expected
    /// size), with int8 codes beside the vectors when `quantized`.
    pub(super) fn bytes_at(rows: usize, dim: usize, m: usize, quantized: bool) -> usize {
        let m0 = 2 * m.max(2);
        let lists = (m0 + 1) * 4 + std::mem::size_of::<Mutex<()>>() + 1 + 16 + 4 * (m + 1) / (m - 1).max(1);
        rows * (row_bytes(dim, quantized) + lists)
    }
}

/// Bytes a row's vector takes, with its codes and their scale when `quantized`.
fn row_bytes(dim: usize, quantized: bool) -> usize {
    dim * 4 + if quantized { dim + 4 } else { 0 }
}

/// The level of row `row`: `⌊−ln(u) × scale⌋` for `u` uniform in (0, 1] from a hash of the row, at most
/// [`MAX_LEVEL`].
fn level(row: u64, scale: f64) -> u8 {
    // SplitMix64.
    let mut z = row.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
    ((-u.ln() * scale) as usize).min(MAX_LEVEL) as u8
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::vector;
    use crate::index::unit;

    fn data(rows: u64, dim: usize) -> Vec<f32> {
        (0..rows).flat_map(|i| unit(&vector(i, dim), dim).unwrap()).collect()
    }

    fn exact(data: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<(f32, u32)> =
            data.chunks_exact(dim).enumerate().map(|(r, v)| (distance(query, v), r as u32)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, r)| r).collect()
    }

    #[test]
    fn r17_every_row_finds_itself_and_searches_find_the_exact_neighbours() {
        let (rows, dim) = (3_000u64, 32);
        let data = data(rows, dim);
        let graph = build(&data, dim, 16, 100);
        assert_eq!(graph.len(), rows as usize);
        let row = |r: u32| &data[r as usize * dim..(r as usize + 1) * dim];
        for r in 0..rows as u32 {
            let found = graph.search(|other| distance(row(r), row(other)), 1, 32, None);
            assert_eq!(found[0].0, r, "row {r} is not found by its own vector");
        }
        let mut hits = 0;
        for q in 0..100 {
            let query = unit(&vector(1_000_000 + q, dim), dim).unwrap();
            let found: Vec<u32> =
                graph.search(|other| distance(&query, row(other)), 10, 64, None).iter().map(|(r, _)| *r).collect();
            let truth = exact(&data, dim, &query, 10);
            hits += found.iter().filter(|r| truth.contains(r)).count();
        }
        let recall = hits as f64 / 1_000.0;
        assert!(recall >= 0.95, "recall@10 at ef 64: {recall}");
    }

    #[test]
    fn r17_int8_construction_builds_a_graph_as_good_as_full_precision_and_searches_return_exact_distances() {
        let (rows, dim) = (3_000u64, 64);
        let data = data(rows, dim);
        let recall = |quantized: bool| {
            let mut graph = Growing::new(dim, 16, 100, quantized);
            for vector in data.chunks_exact(dim) {
                graph.push(vector);
            }
            graph.link_all();
            let mut hits = 0;
            for q in 0..100 {
                let query = unit(&vector(2_000_000 + q, dim), dim).unwrap();
                let found = graph.search(&query, 10, 48, None);
                for (row, d) in &found {
                    let exact = distance(&query, &data[*row as usize * dim..(*row as usize + 1) * dim]);
                    assert!((d - exact).abs() < 1e-6, "row {row}: {d} is not the exact distance {exact}");
                }
                let truth = exact(&data, dim, &query, 10);
                hits += found.iter().filter(|(r, _)| truth.contains(r)).count();
            }
            hits as f64 / 1_000.0
        };
        let (codes, full) = (recall(true), recall(false));
        assert!(full >= 0.85, "recall@10 at ef 48, full precision: {full}");
        assert!(codes >= full - 0.02, "recall@10 at ef 48: int8 construction {codes}, full precision {full}");
    }

    #[test]
    fn a_graph_naming_a_row_on_a_layer_it_does_not_reach_loads_without_that_link() {
        // Row 0 reaches layer 1 and names row 1 there, which does not reach it (a damaged file): the link is left
        // out, and walks and inserts go on.
        let dim = 8;
        let data = data(2, dim);
        let graph = Graph::from_parts(0, vec![0, 1, 2], vec![1, 0], vec![HashMap::from([(0, vec![1])])]);
        let mut growing = Growing::from_graph(&graph, &data, dim, 8, 16, true);
        for row in 0..2u32 {
            let query = &data[row as usize * dim..(row as usize + 1) * dim];
            assert_eq!(growing.search(query, 1, 8, None)[0].0, row);
        }
        growing.push(&unit(&vector(7, dim), dim).unwrap());
        assert_eq!(growing.link(usize::MAX), 1);
    }

    #[test]
    fn r17_lists_keep_to_their_room_and_never_link_a_row_to_itself_or_twice() {
        let (rows, dim, m) = (2_000u64, 16, 8);
        let data = data(rows, dim);
        let graph = build(&data, dim, m, 48);
        for r in 0..rows as u32 {
            for (layer, list) in graph.neighbours(r) {
                let room = if layer == 0 { 2 * m } else { m };
                assert!(list.len() <= room, "row {r} layer {layer}: {} links", list.len());
                assert!(!list.contains(&r), "row {r} links to itself on layer {layer}");
                let mut sorted = list.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), list.len(), "row {r} layer {layer} links a row twice");
                assert!(list.iter().all(|n| *n < rows as u32));
            }
        }
    }

    #[test]
    fn tiny_graphs_build_and_search() {
        let dim = 8;
        assert!(build(&[], dim, 8, 16).is_empty());
        for rows in 1..5u64 {
            let data = data(rows, dim);
            let graph = build(&data, dim, 8, 16);
            let found =
                graph.search(|r| distance(&data[..dim], &data[r as usize * dim..(r as usize + 1) * dim]), 10, 16, None);
            assert_eq!(found.len(), rows as usize);
            assert_eq!(found[0].0, 0);
        }
    }

    #[test]
    fn levels_thin_out_by_m() {
        let scale = 1.0 / 16f64.ln();
        let above: usize = (0..100_000u64).filter(|r| level(*r, scale) >= 1).count();
        // P(level ≥ 1) = 1/16.
        assert!((5_800..6_700).contains(&above), "{above} of 100 000 rows above layer 0");
    }
}
