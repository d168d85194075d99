//! The directed kNN graph the refinement runs over, kept as each segment's `k` nearest earlier-or-later segments:
//! a new segment takes the neighbours the index found for it, and enters the lists of those neighbours it is nearer
//! to than their current farthest — so edges are also retracted, which the dataflow sees as negative differences.
//! A segment beyond the refinement's horizon is removed with its edges in both directions; the lists that held it
//! are one shorter until a newcomer fills them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

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
}
