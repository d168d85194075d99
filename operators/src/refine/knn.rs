//! The directed kNN graph the refinement runs over, kept as each segment's `k` nearest earlier-or-later segments:
//! a new segment takes the neighbours the index found for it, and enters the lists of those neighbours it is nearer
//! to than their current farthest — so edges are also retracted, which the dataflow sees as negative differences.
//! A segment beyond the refinement's horizon is removed with its edges in both directions; the lists that held it
//! are one shorter until a newcomer fills them.
//!
//! A newcomer's neighbours are found by [`nearest`]: an exact search over the half-precision embeddings of the segments
//! the refinement holds, so its cost is bounded by the horizon, whatever the size of the space's index.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use simsimd::{SpatialSimilarity, f16};

/// A directed edge `src → dst` (`dst` is among the nearest neighbours of `src`); `close` when their cosine distance
/// is within the cluster threshold.
pub type Edge = (u64, u64, bool);

/// Each node's nearest neighbours, nearest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnnGraph {
    k: usize,
    max_distance: f32,
    lists: HashMap<u64, Vec<(u64, f32)>>,
    /// For each node, the nodes whose lists hold it: what a removal must visit. Derived from `lists`, so not saved.
    #[serde(skip)]
    holders: HashMap<u64, Vec<u64>>,
}

impl KnnGraph {
    /// An empty graph keeping `k` neighbours per node; edges within `max_distance` are `close`.
    pub fn new(k: usize, max_distance: f32) -> Self {
        KnnGraph { k, max_distance, lists: HashMap::new(), holders: HashMap::new() }
    }

    /// Rebuilds what a saved graph does not hold (which lists hold each node); call after deserialising.
    pub fn restored(mut self) -> Self {
        self.holders.clear();
        for (src, list) in &self.lists {
            for (dst, _) in list {
                self.holders.entry(*dst).or_default().push(*src);
            }
        }
        self
    }

    /// Whether the graph was built with `k` neighbours per node and this cluster threshold.
    pub fn built_with(&self, k: usize, max_distance: f32) -> bool {
        self.k == k && self.max_distance == max_distance
    }

    /// Nodes in the graph.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Whether `node` is in the graph.
    pub fn contains(&self, node: u64) -> bool {
        self.lists.contains_key(&node)
    }

    /// The neighbours of `node`, nearest first.
    pub fn neighbours(&self, node: u64) -> &[(u64, f32)] {
        self.lists.get(&node).map_or(&[], Vec::as_slice)
    }

    /// Every node with its list.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[(u64, f32)])> {
        self.lists.iter().map(|(node, list)| (*node, list.as_slice()))
    }

    /// Every edge.
    pub fn edges(&self) -> impl Iterator<Item = Edge> + '_ {
        self.lists.iter().flat_map(|(src, list)| list.iter().map(|(dst, d)| (*src, *dst, *d <= self.max_distance)))
    }

    /// Adds `node` with the neighbours the index `found` for it (any order; itself, unknown nodes and duplicates
    /// are skipped) and pushes the edge changes: its own edges, and for each neighbour it displaces the farthest of,
    /// that edge out and the edge to `node` in. A node already present changes nothing; returns whether it was new.
    pub fn add(&mut self, node: u64, found: &[(u64, f32)], changes: &mut Vec<(Edge, isize)>) -> bool {
        if self.lists.contains_key(&node) {
            return false;
        }
        let mut list: Vec<(u64, f32)> = found
            .iter()
            .copied()
            .filter(|(id, d)| *id != node && d.is_finite() && self.lists.contains_key(id))
            .collect();
        list.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        list.dedup_by_key(|(id, _)| *id);
        list.truncate(self.k);
        let close = |d: f32| d <= self.max_distance;
        for &(dst, d) in &list {
            changes.push(((node, dst, close(d)), 1));
            let theirs = self.lists.get_mut(&dst).expect("neighbours are nodes");
            let farther = |&(id, e): &(u64, f32)| e.total_cmp(&d).then(id.cmp(&node)).is_gt();
            if theirs.len() < self.k {
                let at = theirs.iter().position(farther).unwrap_or(theirs.len());
                theirs.insert(at, (node, d));
                changes.push(((dst, node, close(d)), 1));
                self.holders.entry(node).or_default().push(dst);
            } else if let Some(at) = theirs.iter().position(farther) {
                let (out, e) = theirs.pop().expect("a full list is not empty");
                changes.push(((dst, out, close(e)), -1));
                theirs.insert(at, (node, d));
                changes.push(((dst, node, close(d)), 1));
                forget_holder(&mut self.holders, out, dst);
                self.holders.entry(node).or_default().push(dst);
            }
        }
        for &(dst, _) in &list {
            self.holders.entry(dst).or_default().push(node);
        }
        self.lists.insert(node, list);
        true
    }

    /// Removes `node` and pushes the retraction of its edges in both directions: its own list, and its entry in
    /// every list that holds it (those lists stay one shorter until a newcomer enters them). Returns whether it was
    /// present.
    pub fn remove(&mut self, node: u64, changes: &mut Vec<(Edge, isize)>) -> bool {
        let Some(list) = self.lists.remove(&node) else { return false };
        let close = |d: f32| d <= self.max_distance;
        for (dst, d) in list {
            changes.push(((node, dst, close(d)), -1));
            forget_holder(&mut self.holders, dst, node);
        }
        for src in self.holders.remove(&node).unwrap_or_default() {
            let Some(theirs) = self.lists.get_mut(&src) else { continue };
            if let Some(at) = theirs.iter().position(|(id, _)| *id == node) {
                let (_, d) = theirs.remove(at);
                changes.push(((src, node, close(d)), -1));
            }
        }
        true
    }
}

/// `holder`'s list no longer holds `node`.
fn forget_holder(holders: &mut HashMap<u64, Vec<u64>>, node: u64, holder: u64) {
    if let Some(list) = holders.get_mut(&node) {
        if let Some(at) = list.iter().position(|h| *h == holder) {
            list.swap_remove(at);
        }
        if list.is_empty() {
            holders.remove(&node);
        }
    }
}

/// Queries compared together with each candidate, so that a candidate is read from memory once per group.
const QUERY_GROUP: usize = 16;

/// A unit vector in half precision, as the refinement holds and searches it.
pub fn half(unit: &[f32]) -> Vec<f16> {
    unit.iter().map(|x| f16::from_f32(*x)).collect()
}

/// For each query `(node, unit embedding)`, in order, its `k` nearest among `held` and the queries before it, nearest
/// first (ties by id), with cosine distances; exact over the half-precision embeddings. Queries are compared with
/// the candidates in groups spread over rayon's threads.
pub fn nearest(held: &[(u64, &[f16])], queries: &[(u64, &[f16])], k: usize) -> Vec<Vec<(u64, f32)>> {
    let candidates: Vec<(u64, &[f16])> = held.iter().chain(queries).copied().collect();
    queries
        .par_chunks(QUERY_GROUP)
        .enumerate()
        .flat_map_iter(|(group, chunk)| {
            let first = group * QUERY_GROUP;
            // The queries of this group see the held candidates and the queries before their own.
            let seen = &candidates[..held.len() + first + chunk.len()];
            let mut best: Vec<Vec<(u64, f32)>> = vec![Vec::with_capacity(k + 1); chunk.len()];
            for (at, &(id, vector)) in seen.iter().enumerate() {
                for (q, &(node, query)) in chunk.iter().enumerate() {
                    if at >= held.len() + first + q || id == node {
                        continue;
                    }
                    let dot = f16::dot(query, vector).unwrap_or(0.0);
                    keep(&mut best[q], (id, (1.0 - dot).max(0.0) as f32), k);
                }
            }
            best
        })
        .collect()
}

/// Inserts `found` into `best` (nearest first, ties by id) if it is among the `k` nearest.
fn keep(best: &mut Vec<(u64, f32)>, found: (u64, f32), k: usize) {
    let farther = |&(id, d): &(u64, f32)| d.total_cmp(&found.1).then(id.cmp(&found.0)).is_gt();
    if best.len() == k && !best.last().is_some_and(farther) {
        return;
    }
    let at = best.iter().position(farther).unwrap_or(best.len());
    best.insert(at, found);
    best.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearer_newcomer_displaces_the_farthest_neighbour_and_the_changes_replay_to_the_edges() {
        let mut graph = KnnGraph::new(2, 0.15);
        let mut changes = Vec::new();
        assert!(graph.add(1, &[], &mut changes));
        assert!(graph.add(2, &[(1, 0.5), (2, 0.0), (99, 0.1)], &mut changes));
        assert!(graph.add(3, &[(1, 0.4), (2, 0.3)], &mut changes));
        // 4 is nearer to 1 than 1's farthest (2 at 0.5): that edge goes.
        assert!(graph.add(4, &[(1, 0.1), (3, 0.9)], &mut changes));
        assert!(!graph.add(4, &[(1, 0.0)], &mut changes));
        assert_eq!(graph.neighbours(1), [(4, 0.1), (3, 0.4)]);
        assert_eq!(graph.neighbours(3), [(2, 0.3), (1, 0.4)]);
        let mut replayed: HashMap<Edge, isize> = HashMap::new();
        for (edge, diff) in changes {
            *replayed.entry(edge).or_default() += diff;
        }
        replayed.retain(|_, diff| *diff != 0);
        let mut edges: Vec<Edge> = replayed.into_keys().collect();
        edges.sort();
        let mut want: Vec<Edge> = graph.edges().collect();
        want.sort();
        assert_eq!(edges, want);
        assert!(want.contains(&(1, 4, true)) && want.contains(&(1, 3, false)));
    }

    fn replay(changes: &[(Edge, isize)]) -> Vec<Edge> {
        let mut replayed: HashMap<Edge, isize> = HashMap::new();
        for (edge, diff) in changes {
            *replayed.entry(*edge).or_default() += diff;
        }
        assert!(replayed.values().all(|d| *d == 0 || *d == 1), "{replayed:?}");
        let mut edges: Vec<Edge> = replayed.into_iter().filter(|(_, d)| *d == 1).map(|(e, _)| e).collect();
        edges.sort();
        edges
    }

    #[test]
    fn r15_a_removed_node_takes_its_edges_in_both_directions_and_a_restored_graph_removes_alike() {
        let mut graph = KnnGraph::new(2, 0.15);
        let mut changes = Vec::new();
        graph.add(1, &[], &mut changes);
        graph.add(2, &[(1, 0.1)], &mut changes);
        graph.add(3, &[(1, 0.2), (2, 0.3)], &mut changes);
        graph.add(4, &[(3, 0.05), (2, 0.4)], &mut changes);
        let saved: KnnGraph =
            bincode::deserialize::<KnnGraph>(&bincode::serialize(&graph).unwrap()).unwrap().restored();
        for mut graph in [graph, saved] {
            let mut changes: Vec<(Edge, isize)> = graph.edges().map(|e| (e, 1)).collect();
            assert!(graph.remove(3, &mut changes));
            assert!(!graph.remove(3, &mut changes));
            assert!(!graph.contains(3));
            assert!(graph.iter().all(|(_, list)| list.iter().all(|(id, _)| *id != 3)));
            let mut want: Vec<Edge> = graph.edges().collect();
            want.sort();
            assert_eq!(replay(&changes), want);
            assert_eq!(graph.neighbours(4), [(2, 0.4)], "4 keeps its other neighbour");
            // A newcomer fills the shorter list, and a later removal still finds every holder.
            graph.add(5, &[(4, 0.01), (1, 0.5)], &mut changes);
            assert!(graph.remove(4, &mut changes));
            assert!(graph.remove(1, &mut changes));
            let mut want: Vec<Edge> = graph.edges().collect();
            want.sort();
            assert_eq!(replay(&changes), want);
            assert_eq!(graph.len(), 2);
            assert_eq!(graph.holders.values().map(Vec::len).sum::<usize>(), graph.edges().count());
        }
    }

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        crate::index::unit(&crate::index::tests::vector(seed, dim), dim).unwrap()
    }

    #[test]
    fn r15_nearest_is_exact_over_the_held_and_the_earlier_queries_only() {
        let dim = 64;
        let vectors: Vec<Vec<f32>> = (0..120).map(|i| unit(i, dim)).collect();
        let halves: Vec<Vec<f16>> = vectors.iter().map(|v| half(v)).collect();
        let held: Vec<(u64, &[f16])> = (0..80).map(|i| (i as u64, halves[i].as_slice())).collect();
        // 40 queries: more than two groups, so that the rule holds across groups.
        let queries: Vec<(u64, &[f16])> = (80..120).map(|i| (i as u64, halves[i].as_slice())).collect();
        let found = nearest(&held, &queries, 7);
        assert_eq!(found.len(), 40);
        for (q, found) in found.iter().enumerate() {
            let node = 80 + q;
            // By brute force in f64 over the full-precision vectors: every held segment and the queries before.
            let mut want: Vec<(u64, f64)> = (0..node)
                .map(|i| {
                    let dot: f64 =
                        vectors[node].iter().zip(&vectors[i]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    (i as u64, 1.0 - dot)
                })
                .collect();
            want.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let ids: Vec<u64> = found.iter().map(|(id, _)| *id).collect();
            let want_ids: Vec<u64> = want[..7].iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, want_ids, "query {node}");
            for ((_, d), (_, w)) in found.iter().zip(&want) {
                assert!((f64::from(*d) - w).abs() < 1e-3, "query {node}: {d} vs {w}");
            }
        }
    }

    #[test]
    fn r15_nearest_skips_the_query_itself_breaks_ties_by_id_and_answers_an_empty_space() {
        let (v, w) = (half(&unit(1, 16)), half(&unit(2, 16)));
        // Three copies of v at the same distance: the smaller ids first; the query's own id never answers.
        let held: Vec<(u64, &[f16])> = vec![(9, &v), (4, &w), (3, &v), (5, &v)];
        let found = nearest(&held, &[(5, &v)], 2);
        assert_eq!(found[0].iter().map(|(id, _)| *id).collect::<Vec<_>>(), [3, 9]);
        assert!(found[0][0].1 < 1e-3);
        let found = nearest(&[], &[(1, &v), (2, &v)], 3);
        assert_eq!(found.iter().map(Vec::len).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(found[1][0].0, 1);
    }
}
