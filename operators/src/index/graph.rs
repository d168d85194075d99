//! A sealed shard's HNSW graph, frozen: the layers hnsw_rs built, kept as flat neighbour lists and searched over
//! whichever tier holds the shard's vectors.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};

use std::sync::Arc;

use hnsw_rs::hnsw::Point;
use hnsw_rs::prelude::{DistDot, Hnsw};

/// Layered neighbour lists over rows `0..len`.
pub struct Graph {
    entry: u32,
    /// Layer 0: the neighbours of row `r` are `links[offsets[r]..offsets[r + 1]]`.
    offsets: Vec<u32>,
    links: Vec<u32>,
    /// Layers 1 and up (index 0 is layer 1): neighbours of the rows that reach that layer.
    upper: Vec<HashMap<u32, Vec<u32>>>,
}

/// What [`Graph::from_hnsw`] takes out of an hnsw_rs graph.
pub struct Extracted {
    /// The frozen graph.
    pub graph: Graph,
    /// Each row's id (the id it was inserted under).
    pub ids: Vec<u64>,
    /// Each row's vector, row after row, as stored in the graph.
    pub vectors: Vec<f32>,
}

/// A distance that orders totally (shared with the builder).
#[derive(Clone, Copy, PartialEq)]
pub(super) struct Distance(pub(super) f32);

impl Eq for Distance {}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Distance {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Graph {
    /// Freezes `hnsw`: rows are numbered in the order hnsw_rs lists its points.
    pub fn from_hnsw(hnsw: &Hnsw<'_, f32, DistDot>) -> Extracted {
        let mut vectors = Vec::new();
        let (graph, ids) = Graph::from_hnsw_with(hnsw, &mut |v| {
            vectors.extend_from_slice(v);
            Ok(())
        })
        .expect("collecting in memory cannot fail");
        Extracted { graph, ids, vectors }
    }

    /// Freezes `hnsw` as [`Graph::from_hnsw`] does, handing each row's vector to `vector` in row order instead of
    /// keeping them: a shard being sealed streams them to its file rather than copying them all first.
    pub fn from_hnsw_with(
        hnsw: &Hnsw<'_, f32, DistDot>,
        vector: &mut dyn FnMut(&[f32]) -> io::Result<()>,
    ) -> io::Result<(Graph, Vec<u64>)> {
        let points: Vec<_> = hnsw_points(hnsw).collect();
        let row_of: HashMap<usize, u32> =
            points.iter().enumerate().map(|(row, p)| (p.get_origin_id(), row as u32)).collect();
        let mut ids = Vec::with_capacity(points.len());
        let mut offsets = Vec::with_capacity(points.len() + 1);
        let mut links = Vec::new();
        let mut upper: Vec<HashMap<u32, Vec<u32>>> = Vec::new();
        let (mut entry, mut entry_level) = (0u32, 0usize);
        offsets.push(0);
        for (row, point) in points.iter().enumerate() {
            ids.push(point.get_origin_id() as u64);
            vector(point.get_v())?;
            let level = usize::from(point.get_point_id().0);
            if level > entry_level || row == 0 {
                (entry, entry_level) = (row as u32, level);
            }
            for (layer, neighbours) in point.get_neighborhood_id().into_iter().enumerate() {
                let rows = neighbours.iter().filter_map(|n| row_of.get(&n.d_id).copied());
                if layer == 0 {
                    links.extend(rows);
                } else if layer <= level {
                    if upper.len() < layer {
                        upper.resize_with(layer, HashMap::new);
                    }
                    upper[layer - 1].insert(row as u32, rows.collect());
                }
            }
            offsets.push(links.len() as u32);
        }
        upper.truncate(entry_level);
        Ok((Graph { entry, offsets, links, upper }, ids))
    }

    /// A graph from its parts: the entry row, layer 0's lists (row `r`'s are `links[offsets[r]..offsets[r + 1]]`)
    /// and the upper layers' (index 0 is layer 1), as a builder made them.
    pub(super) fn from_parts(
        entry: u32,
        offsets: Vec<u32>,
        links: Vec<u32>,
        upper: Vec<HashMap<u32, Vec<u32>>>,
    ) -> Graph {
        Graph { entry, offsets, links, upper }
    }

    /// The row searches start from.
    pub(super) fn entry(&self) -> u32 {
        self.entry
    }

    /// Row `row`'s neighbours on each layer it reaches, layer 0 first.
    pub(super) fn neighbours(&self, row: u32) -> Vec<(usize, Vec<u32>)> {
        let span = self.offsets[row as usize] as usize..self.offsets[row as usize + 1] as usize;
        let mut layers = vec![(0, self.links[span].to_vec())];
        for (layer, lists) in self.upper.iter().enumerate() {
            if let Some(list) = lists.get(&row) {
                layers.push((layer + 1, list.clone()));
            }
        }
        layers
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether the graph has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let upper: usize = self.upper.iter().flat_map(|l| l.values()).map(|n| 4 * n.len() + 40).sum();
        4 * (self.offsets.len() + self.links.len()) + upper
    }

    /// The `k` rows nearest by `distance` (with their distances, nearest first) among those `accept` lets through,
    /// searching layer 0 with a beam of `ef`.
    pub fn search(
        &self,
        distance: impl Fn(u32) -> f32,
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<(u32, f32)> {
        self.search_prefetching(distance, |_| {}, k, ef, accept)
    }

    /// [`Graph::search`], calling `prefetch(row)` for the next row to be measured while one is: what `distance` will
    /// read of it is then on its way.
    pub fn search_prefetching(
        &self,
        distance: impl Fn(u32) -> f32,
        prefetch: impl Fn(u32),
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<(u32, f32)> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let accepted = |row: u32| accept.is_none_or(|f| f(row));
        let (mut nearest, mut best) = (self.entry, distance(self.entry));
        for layer in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                for &row in layer.get(&nearest).map(Vec::as_slice).unwrap_or_default() {
                    let d = distance(row);
                    if d < best {
                        (nearest, best, moved) = (row, d, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let ef = ef.max(k);
        let mut visited = vec![0u64; self.len().div_ceil(64)];
        let mut visit = |row: u32| {
            let (word, bit) = (row as usize / 64, 1u64 << (row % 64));
            let fresh = visited[word] & bit == 0;
            visited[word] |= bit;
            fresh
        };
        let mut candidates = BinaryHeap::new();
        let mut found: BinaryHeap<(Distance, u32)> = BinaryHeap::with_capacity(ef + 1);
        let mut fresh = Vec::new();
        visit(nearest);
        candidates.push(Reverse((Distance(best), nearest)));
        if accepted(nearest) {
            found.push((Distance(best), nearest));
        }
        while let Some(Reverse((Distance(d), row))) = candidates.pop() {
            if found.len() >= ef && found.peek().is_some_and(|(worst, _)| d > worst.0) {
                break;
            }
            let span = self.offsets[row as usize] as usize..self.offsets[row as usize + 1] as usize;
            fresh.clear();
            fresh.extend(self.links[span].iter().copied().filter(|next| visit(*next)));
            for (i, &next) in fresh.iter().enumerate() {
                if let Some(&after) = fresh.get(i + 1) {
                    prefetch(after);
                }
                let d = distance(next);
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
        let mut found: Vec<(u32, f32)> = found.into_iter().map(|(d, row)| (row, d.0)).collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
    }

    /// Writes the graph in its own little-endian format.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let words = |out: &mut dyn Write, values: &[u32]| -> io::Result<()> {
            out.write_all(&(values.len() as u64).to_le_bytes())?;
            values.iter().try_for_each(|v| out.write_all(&v.to_le_bytes()))
        };
        out.write_all(&self.entry.to_le_bytes())?;
        words(out, &self.offsets)?;
        words(out, &self.links)?;
        out.write_all(&(self.upper.len() as u64).to_le_bytes())?;
        for layer in &self.upper {
            let mut rows: Vec<_> = layer.iter().collect();
            rows.sort_by_key(|(row, _)| **row);
            out.write_all(&(rows.len() as u64).to_le_bytes())?;
            for (row, neighbours) in rows {
                out.write_all(&row.to_le_bytes())?;
                words(out, neighbours)?;
            }
        }
        Ok(())
    }

    /// Reads what [`Graph::write`] wrote; a clear error when it is cut short or inconsistent.
    pub fn read(input: &mut impl Read) -> io::Result<Graph> {
        fn word(input: &mut dyn Read) -> io::Result<u32> {
            let mut bytes = [0; 4];
            input.read_exact(&mut bytes)?;
            Ok(u32::from_le_bytes(bytes))
        }
        fn count(input: &mut dyn Read) -> io::Result<usize> {
            let mut bytes = [0; 8];
            input.read_exact(&mut bytes)?;
            let n = u64::from_le_bytes(bytes);
            usize::try_from(n).ok().filter(|n| *n < 1 << 34).ok_or_else(|| invalid(format!("count {n} is implausible")))
        }
        fn words(input: &mut dyn Read) -> io::Result<Vec<u32>> {
            let n = count(input)?;
            // Allocated once at its length (a search of a shard in the archive tier reads its graph each time), up to
            // a bound: a damaged count fails at the end of the file, not in the allocator.
            const BLOCK: usize = 1 << 14;
            let mut words = Vec::with_capacity(n.min(MAX_WORDS_UP_FRONT));
            let mut block = [0u8; BLOCK];
            while words.len() < n {
                let bytes = &mut block[..((n - words.len()) * 4).min(BLOCK)];
                input.read_exact(bytes).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        io::Error::new(e.kind(), format!("{n} words announced, fewer found"))
                    }
                    _ => e,
                })?;
                words.extend(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
            Ok(words)
        }
        let entry = word(input)?;
        let offsets = words(input)?;
        let links = words(input)?;
        let layers = count(input)?;
        let mut upper = Vec::with_capacity(layers);
        for _ in 0..layers {
            let rows = count(input)?;
            let mut layer = HashMap::with_capacity(rows);
            for _ in 0..rows {
                let row = word(input)?;
                layer.insert(row, words(input)?);
            }
            upper.push(layer);
        }
        let rows = offsets.len().saturating_sub(1) as u32;
        let consistent = !offsets.is_empty()
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().is_some_and(|last| *last as usize == links.len())
            && links.iter().chain(upper.iter().flat_map(|l| l.values().flatten())).all(|r| *r < rows)
            && (entry < rows || rows == 0);
        if !consistent {
            return Err(invalid("the neighbour lists do not fit together".into()));
        }
        Ok(Graph { entry, offsets, links, upper })
    }
}

/// The most words a list read by [`Graph::read`] is given room for before they are read (16 MiB): a layer 0 of 65 536
/// rows at m = 32.
const MAX_WORDS_UP_FRONT: usize = 1 << 22;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_reads_back_and_a_damaged_count_is_an_error_not_an_allocation() {
        let graph = Graph {
            entry: 1,
            offsets: vec![0, 1, 3, 4],
            links: vec![1, 0, 2, 1],
            upper: vec![HashMap::from([(1, vec![2])])],
        };
        let mut bytes = Vec::new();
        graph.write(&mut bytes).unwrap();
        let read = Graph::read(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            (read.entry, &read.offsets, &read.links, &read.upper),
            (1, &graph.offsets, &graph.links, &graph.upper)
        );
        // A count of 2^33 words (32 GiB) in a file of a few bytes: refused at the end of the file.
        let mut damaged = bytes.clone();
        damaged[4..12].copy_from_slice(&(1u64 << 33).to_le_bytes());
        let error = Graph::read(&mut damaged.as_slice()).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        // Cut short anywhere: an error.
        for len in 0..bytes.len() {
            assert!(Graph::read(&mut &bytes[..len]).is_err(), "cut at {len}");
        }
    }
}
