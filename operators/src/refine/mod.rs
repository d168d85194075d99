//! Graph refinement: the kNN graph of each space's segments, maintained as segments are indexed, and what
//! differential dataflow keeps up to date over it — refined embeddings (embedding propagation), labels spread from a
//! few given ones (label propagation), and clusters of mutual near neighbours (connected components).
//!
//! [`knn`] keeps the graph, [`rules`] holds the per-node arithmetic, [`flow`] the differential computation and
//! [`oracle`] the same computation from scratch, which the incremental one must equal after every round.

mod config;
pub mod flow;
pub mod knn;
pub mod oracle;
pub mod rules;

pub use config::{RefineConfig, RefineParams};

use std::collections::{HashMap, VecDeque};

/// What the refinement currently says about one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    /// Refined embedding, fixed point.
    pub embedding: Option<rules::Fixed>,
    /// Label scores, sorted by label.
    pub scores: Vec<(String, i64)>,
    /// Cluster name: the smallest id in its component.
    pub cluster: Option<u64>,
}

impl NodeState {
    /// The node's label and its share of the label mass, if any label reached it.
    pub fn label(&self) -> Option<(String, f32)> {
        rules::verdict(&self.scores)
    }

    /// The refined embedding as a unit vector.
    pub fn refined(&self) -> Option<Vec<f32>> {
        self.embedding.as_deref().map(rules::from_fixed)
    }
}

/// What was last shown of a segment when it was retired (its label as a number into the texts of labels seen).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Retired {
    label: Option<(u32, f32)>,
    cluster: Option<u64>,
}

/// The refinement's current outputs, per node, built from the changes of settled rounds; shared by the workers (each
/// applies the keys it holds) and read by queries. Beside them, a compact record of the last label and cluster of
/// the most recently retired segments of each space, so that queries still show them.
#[derive(Debug, Default)]
pub struct Refinements {
    nodes: HashMap<u64, NodeState>,
    /// Each label's score summed over every node.
    totals: HashMap<String, i64>,
    retired: HashMap<u64, Retired>,
    /// Per space, its retired segments in the order they were retired: the oldest records go first.
    retired_order: HashMap<String, VecDeque<u64>>,
    /// The texts of the labels retired records name, and their numbers.
    label_texts: Vec<String>,
    label_numbers: HashMap<String, u32>,
}

/// A retired segment's last label (with its share) and cluster.
pub type RetiredState = (Option<(String, f32)>, Option<u64>);

/// Refinements shared between the workers and the query API.
pub type SharedRefinements = std::sync::Arc<std::sync::RwLock<Refinements>>;

impl Refinements {
    /// Applies one round's consolidated changes; returns the nodes they touched, sorted.
    pub fn apply(&mut self, changes: &flow::Changes) -> Vec<u64> {
        let mut touched = Vec::new();
        for ((node, h), diff) in &changes.embeddings {
            let state = self.nodes.entry(*node).or_default();
            if *diff > 0 {
                state.embedding = Some(h.clone());
            } else if state.embedding.as_ref() == Some(h) {
                state.embedding = None;
            }
            touched.push(*node);
        }
        for ((node, (label, score)), diff) in &changes.labels {
            let state = self.nodes.entry(*node).or_default();
            let entry = (label.clone(), *score);
            let total = self.totals.entry(label.clone()).or_default();
            *total += score * *diff as i64;
            if *total == 0 {
                self.totals.remove(label);
            }
            if *diff > 0 {
                let at = state.scores.binary_search(&entry).unwrap_or_else(|at| at);
                state.scores.insert(at, entry);
            } else if let Ok(at) = state.scores.binary_search(&entry) {
                state.scores.remove(at);
            }
            touched.push(*node);
        }
        for ((node, cluster), diff) in &changes.clusters {
            let state = self.nodes.entry(*node).or_default();
            if *diff > 0 {
                state.cluster = Some(*cluster);
            } else if state.cluster == Some(*cluster) {
                state.cluster = None;
            }
            touched.push(*node);
        }
        touched.sort_unstable();
        touched.dedup();
        // A retired node's outputs are all retracted: nothing of it stays.
        for node in &touched {
            if self.nodes.get(node).is_some_and(|state| *state == NodeState::default()) {
                self.nodes.remove(node);
            }
        }
        touched
    }

    /// Records what `node` of `space` shows now (its label and cluster) as it is retired, keeping at most `keep`
    /// such records for the space (the oldest go). The node's outputs themselves leave through [`Self::apply`]
    /// once its retraction settles.
    pub fn retire(&mut self, space: &str, node: u64, keep: usize) {
        let label = self.label(node).map(|(text, share)| (self.label_number(&text), share));
        let cluster = self.nodes.get(&node).and_then(|state| state.cluster);
        self.remember(space, node, Retired { label, cluster }, keep);
    }

    fn remember(&mut self, space: &str, node: u64, record: Retired, keep: usize) {
        let order = self.retired_order.entry(space.to_owned()).or_default();
        if self.retired.insert(node, record).is_none() {
            order.push_back(node);
        }
        while order.len() > keep {
            if let Some(oldest) = order.pop_front() {
                self.retired.remove(&oldest);
            }
        }
    }

    fn label_number(&mut self, text: &str) -> u32 {
        if let Some(number) = self.label_numbers.get(text) {
            return *number;
        }
        let number = self.label_texts.len() as u32;
        self.label_texts.push(text.to_owned());
        self.label_numbers.insert(text.to_owned(), number);
        number
    }

    /// A label given to a retired segment of `space`: it is shown as the segment's label with a share of 1 (or taken
    /// away with `None`), its cluster stays; the label does not spread, since the segment has left the graph.
    /// Returns the segment's state as now shown.
    pub fn label_retired(&mut self, space: &str, node: u64, label: Option<&str>, keep: usize) -> RetiredState {
        let cluster = self.retired.get(&node).and_then(|record| record.cluster);
        let label = label.map(|text| (self.label_number(text), 1.0));
        self.remember(space, node, Retired { label, cluster }, keep);
        self.retired(node).unwrap_or_default()
    }

    /// What a retired segment showed when it was retired, if its record is still kept.
    pub fn retired(&self, node: u64) -> Option<RetiredState> {
        let record = self.retired.get(&node)?;
        let label = record.label.map(|(number, share)| (self.label_texts[number as usize].clone(), share));
        Some((label, record.cluster))
    }

    /// Retired segments whose records are kept.
    pub fn retired_len(&self) -> usize {
        self.retired.len()
    }

    /// The label of `node` and its share, with each label's scores weighed by the inverse of its total over the
    /// graph (class mass normalisation), so that a label given to well-connected segments does not crowd out one
    /// given to sparse ones.
    pub fn label(&self, node: u64) -> Option<(String, f32)> {
        let state = self.nodes.get(&node)?;
        let weighed: Vec<(&str, f64)> = state
            .scores
            .iter()
            .filter_map(|(label, score)| {
                let total = *self.totals.get(label)?;
                (total > 0).then(|| (label.as_str(), *score as f64 / total as f64))
            })
            .collect();
        let sum: f64 = weighed.iter().map(|(_, w)| w).sum();
        let (label, top) = weighed.iter().max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)))?;
        (sum > 0.0).then(|| (label.to_string(), (top / sum) as f32))
    }

    /// What is known about `node`.
    pub fn get(&self, node: u64) -> Option<&NodeState> {
        self.nodes.get(&node)
    }

    /// Nodes with any output.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has an output yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &NodeState)> {
        self.nodes.iter().map(|(node, state)| (*node, state))
    }

    /// The outputs in the oracle's shape, for comparison.
    pub fn as_outputs(&self) -> oracle::Outputs {
        let mut out = oracle::Outputs::default();
        for (node, state) in &self.nodes {
            if let Some(h) = &state.embedding {
                out.embeddings.insert(*node, h.clone());
            }
            if !state.scores.is_empty() {
                out.labels.insert(*node, state.scores.clone());
            }
            if let Some(cluster) = state.cluster {
                out.clusters.insert(*node, cluster);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(node: u64, diff: isize) -> flow::Changes {
        flow::Changes {
            embeddings: vec![((node, [16_384i16, 0].into_iter().collect()), diff)],
            labels: vec![((node, ("owl".to_owned(), rules::SCORE_ONE / 2)), diff)],
            clusters: vec![((node, 1), diff)],
        }
    }

    #[test]
    fn r15_a_retired_segment_keeps_its_last_label_and_cluster_within_the_bound_and_a_late_label_shows_on_it() {
        let mut refinements = Refinements::default();
        for node in [1, 2, 3] {
            refinements.apply(&changes(node, 1));
        }
        for node in [1, 2, 3] {
            refinements.retire("forest", node, 2);
            refinements.apply(&changes(node, -1));
        }
        assert!(refinements.is_empty(), "a retired node's outputs leave with its retraction");
        assert_eq!(refinements.retired_len(), 2, "the oldest record went");
        assert_eq!(refinements.retired(1), None);
        assert_eq!(refinements.retired(3), Some((Some(("owl".to_owned(), 1.0)), Some(1))));
        // A label given to a retired segment shows with a share of 1 and keeps its cluster; taken away, it goes.
        assert_eq!(refinements.label_retired("forest", 2, Some("wren"), 2), (Some(("wren".to_owned(), 1.0)), Some(1)));
        assert_eq!(refinements.label_retired("forest", 2, None, 2), (None, Some(1)));
        // Another space's records do not push these out.
        refinements.retire("reef", 9, 1);
        assert_eq!(refinements.retired_len(), 3);
    }
}
