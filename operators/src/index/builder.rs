//! chorus's own HNSW graph builder: parallel inserts over flat arrays, building the frozen [`Graph`] sealed shards
//! search.
//!
//! hnsw_rs spends a third of a build in bookkeeping — a lock and an `Arc` per neighbour list, a hash set of the points
//! visited, heaps of wrapped points. Here layer 0's neighbour lists are one array of atomics (per row a count and `2M`
//! slots), a row's upper layers a list of `M + 1` slots per layer, the rows visited generation counters kept per
//! thread, and distances the SimSIMD kernel over the rows' vectors in one flat slice. Rows are inserted in parallel
//! (rayon), as in Malkov and Yashunin's algorithm with its neighbour-selection heuristic (hnswlib's
//! `getNeighborsByHeuristic2`): a row's lists change under its own lock and are read without one. A count is stored
//! after its slots (release) and read before them (acquire), so a reader never reads a slot not yet written; a list
//! being chosen again may show a mix of its old and new rows, every one a row of that layer, which is all a search
//! needs. A row becomes reachable only once every one of its lists is set.
//!
//! A row's level comes from a hash of its number, so the layers are the same in every build of the same rows; the
//! links depend on the order the threads take the rows in.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use rayon::prelude::*;

use super::graph::{Distance, Graph};
use super::kernels::distance;

/// Layers at most (hnsw_rs's count, so graphs of both builders have the same shape).
const MAX_LEVEL: usize = 15;

/// Builds the graph of `vectors` (`dim` values a row, L2-normalised) with `m` links a row on the upper layers and
/// `2m` on layer 0, inserting with a beam of `ef_construction`, on rayon's threads.
pub fn build(vectors: &[f32], dim: usize, m: usize, ef_construction: usize) -> Graph {
    let builder = Builder::new(vectors, dim, m, ef_construction);
    let rows = builder.levels.len() as u32;
    if rows > 0 {
        // The first row alone: it is the entry every other insert starts from.
        builder.insert(0);
        (1..rows).into_par_iter().for_each(|row| builder.insert(row));
    }
    builder.freeze()
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

struct Builder<'a> {
    dim: usize,
    m: usize,
    m0: usize,
    ef: usize,
    vectors: &'a [f32],
    levels: Vec<u8>,
    /// Layer 0: row `r`'s count at `r × (m0 + 1)`, its neighbours after it.
    layer0: Vec<AtomicU32>,
    /// Layers 1 and up: per row, `level × (m + 1)` slots — for each layer from 1, a count and its neighbours.
    upper: Vec<Box<[AtomicU32]>>,
    locks: Vec<Mutex<()>>,
    /// The entry row: the first row of the highest level.
    entry: Mutex<Option<u32>>,
}

impl<'a> Builder<'a> {
    fn new(vectors: &'a [f32], dim: usize, m: usize, ef_construction: usize) -> Builder<'a> {
        let rows = vectors.len() / dim.max(1);
        let m = m.max(2);
        let m0 = 2 * m;
        let scale = 1.0 / (m as f64).ln();
        let levels: Vec<u8> = (0..rows).map(|row| level(row as u64, scale)).collect();
        let slots = |n: usize| (0..n).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        let upper = levels.iter().map(|&l| slots(usize::from(l) * (m + 1)).into_boxed_slice()).collect();
        Builder {
            dim,
            m,
            m0,
            ef: ef_construction.max(m),
            vectors,
            layer0: slots(rows * (m0 + 1)),
            upper,
            levels,
            locks: (0..rows).map(|_| Mutex::new(())).collect(),
            entry: Mutex::new(None),
        }
    }

    fn vector(&self, row: u32) -> &[f32] {
        let at = row as usize * self.dim;
        &self.vectors[at..at + self.dim]
    }

    fn distance(&self, a: &[f32], row: u32) -> f32 {
        distance(a, self.vector(row))
    }

    /// Row `row`'s slots on `layer`: its count, then room for its neighbours.
    fn slots(&self, row: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let at = row as usize * (self.m0 + 1);
            &self.layer0[at..at + self.m0 + 1]
        } else {
            let at = (layer - 1) * (self.m + 1);
            &self.upper[row as usize][at..at + self.m + 1]
        }
    }

    /// Row `row`'s neighbours on `layer`, into `out`.
    fn neighbours(&self, row: u32, layer: usize, out: &mut Vec<u32>) {
        let slots = self.slots(row, layer);
        let count = (slots[0].load(Acquire) as usize).min(slots.len() - 1);
        out.clear();
        out.extend(slots[1..=count].iter().map(|s| s.load(Relaxed)));
    }

    fn insert(&self, row: u32) {
        let level = usize::from(self.levels[row as usize]);
        let query = self.vector(row);
        let mut entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(start) = *entry else {
            *entry = Some(row);
            return;
        };
        let top = usize::from(self.levels[start as usize]);
        // A row above the top holds the entry until it is linked in: one new top at a time.
        let held = if level > top {
            Some(entry)
        } else {
            drop(entry);
            None
        };
        let mut nearest = (self.distance(query, start), start);
        let mut links = Vec::with_capacity(self.m0);
        for layer in (level + 1..=top).rev() {
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
        // Every list of the row is set before any row links to it: reached earlier, a row with an empty list on a
        // lower layer would be a dead end for the inserts that find it, and their links to it would be overwritten.
        let mut entries = vec![nearest];
        let mut chosen_by_layer = Vec::with_capacity(level.min(top) + 1);
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            for layer in (0..=level.min(top)).rev() {
                let found = self.search_layer(query, &entries, layer, &mut visited);
                let chosen = self.select(&found, self.m);
                self.set(row, layer, &chosen);
                chosen_by_layer.push((layer, chosen));
                entries = found;
            }
        });
        for (layer, chosen) in chosen_by_layer {
            let room = if layer == 0 { self.m0 } else { self.m };
            for (d, other) in chosen {
                self.link(other, row, d, layer, room);
            }
        }
        if let Some(mut entry) = held {
            *entry = Some(row);
        }
    }

    /// The `ef` rows nearest `query` on `layer` reachable from `entries`, nearest first.
    fn search_layer(
        &self,
        query: &[f32],
        entries: &[(f32, u32)],
        layer: usize,
        visited: &mut Visited,
    ) -> Vec<(f32, u32)> {
        visited.start(self.levels.len());
        let mut candidates = BinaryHeap::new();
        let mut found: BinaryHeap<(Distance, u32)> = BinaryHeap::with_capacity(self.ef + 1);
        for &(d, row) in entries {
            if visited.visit(row) {
                candidates.push(Reverse((Distance(d), row)));
                found.push((Distance(d), row));
            }
        }
        while found.len() > self.ef {
            found.pop();
        }
        let mut links = Vec::with_capacity(self.m0);
        while let Some(Reverse((Distance(d), row))) = candidates.pop() {
            if found.len() >= self.ef && found.peek().is_some_and(|(worst, _)| d > worst.0) {
                break;
            }
            self.neighbours(row, layer, &mut links);
            for &next in &links {
                if !visited.visit(next) {
                    continue;
                }
                let d = self.distance(query, next);
                if found.len() < self.ef || found.peek().is_some_and(|(worst, _)| d < worst.0) {
                    candidates.push(Reverse((Distance(d), next)));
                    found.push((Distance(d), next));
                    if found.len() > self.ef {
                        found.pop();
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
            let vector = self.vector(row);
            if chosen.iter().all(|&(_, kept)| self.distance(vector, kept) >= d) {
                chosen.push((d, row));
            }
        }
        chosen
    }

    /// Sets `row`'s neighbours on `layer`.
    fn set(&self, row: u32, layer: usize, chosen: &[(f32, u32)]) {
        let _lock = self.locks[row as usize].lock().unwrap_or_else(|p| p.into_inner());
        let slots = self.slots(row, layer);
        for (slot, (_, neighbour)) in slots[1..].iter().zip(chosen) {
            slot.store(*neighbour, Relaxed);
        }
        slots[0].store(chosen.len() as u32, Release);
    }

    /// Links `other` back to `row` (at distance `d`) on `layer`: appended while `other` has room, otherwise its
    /// neighbours and `row` chosen again by the heuristic.
    fn link(&self, other: u32, row: u32, d: f32, layer: usize, room: usize) {
        let _lock = self.locks[other as usize].lock().unwrap_or_else(|p| p.into_inner());
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
        let from = self.vector(other);
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

    /// The frozen graph.
    fn freeze(self) -> Graph {
        let rows = self.levels.len();
        let entry = self.entry.into_inner().unwrap_or_else(|p| p.into_inner()).unwrap_or(0);
        let top = self.levels.get(entry as usize).map_or(0, |l| usize::from(*l));
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut links = Vec::with_capacity(rows * self.m0);
        offsets.push(0);
        let read = |slots: &[AtomicU32]| -> Vec<u32> {
            let count = (slots[0].load(Relaxed) as usize).min(slots.len() - 1);
            slots[1..=count].iter().map(|s| s.load(Relaxed)).collect()
        };
        for row in 0..rows {
            let at = row * (self.m0 + 1);
            links.extend(read(&self.layer0[at..at + self.m0 + 1]));
            offsets.push(links.len() as u32);
        }
        let mut upper: Vec<HashMap<u32, Vec<u32>>> = vec![HashMap::new(); top];
        for (row, slots) in self.upper.iter().enumerate() {
            for (layer, list) in slots.chunks_exact(self.m + 1).enumerate().take(top) {
                upper[layer].insert(row as u32, read(list));
            }
        }
        Graph::from_parts(entry, offsets, links, upper)
    }
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
