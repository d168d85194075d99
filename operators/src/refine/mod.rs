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

/// What the refinement currently says about one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    /// Refined embedding, fixed point.
    pub embedding: Option<Vec<i32>>,
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

/// The refinement's current outputs, per node, built from the changes of settled rounds; shared by the workers (each
/// applies the keys it holds) and read by queries.
#[derive(Debug, Default)]
pub struct Refinements {
    nodes: std::collections::HashMap<u64, NodeState>,
    /// Each label's score summed over every node.
    totals: std::collections::HashMap<String, i64>,
}

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
        touched
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
