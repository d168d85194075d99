//! The refinement computed from scratch in plain Rust: what the incremental dataflow must equal after every round.

use std::collections::{BTreeMap, BTreeSet};

use super::config::RefineParams;
use super::knn::Edge;
use super::rules::{Fixed, LabelId, combine, label_id, spread};

/// Everything the refinement reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// Node id and its own embedding in fixed point.
    pub nodes: BTreeMap<u64, Fixed>,
    /// The kNN edges.
    pub edges: BTreeSet<Edge>,
    /// Seed labels by node.
    pub seeds: BTreeMap<u64, String>,
}

/// Everything the refinement derives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// Each node's refined embedding after `hops` hops.
    pub embeddings: BTreeMap<u64, Fixed>,
    /// Each reached node's label scores after `label_hops` hops, sorted by label.
    pub labels: BTreeMap<u64, Vec<(String, i64)>>,
    /// Each node's cluster: the smallest id of its component of mutual close neighbours.
    pub clusters: BTreeMap<u64, u64>,
}

/// The refinement of `inputs`, from scratch.
pub fn refine(inputs: &Inputs, params: &RefineParams) -> Outputs {
    let mut out_edges: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(src, dst, _) in &inputs.edges {
        if inputs.nodes.contains_key(&src) {
            out_edges.entry(src).or_default().push(dst);
        }
    }
    let no_edges = Vec::new();
    let edges_of = |node: &u64| out_edges.get(node).unwrap_or(&no_edges);

    let mut h = inputs.nodes.clone();
    for _ in 0..params.hops {
        h = inputs
            .nodes
            .iter()
            .map(|(node, own)| {
                let present: Vec<&Fixed> = edges_of(node).iter().filter_map(|d| h.get(d)).collect();
                let mut sum = vec![0i32; own.len()];
                for v in &present {
                    for (s, x) in sum.iter_mut().zip(v.iter()) {
                        *s = s.wrapping_add(i32::from(*x));
                    }
                }
                (*node, combine(own, present.len() as i64, &sum, params.alpha))
            })
            .collect();
    }

    let seeds: BTreeMap<u64, LabelId> = inputs
        .seeds
        .iter()
        .filter(|(node, _)| inputs.nodes.contains_key(node))
        .map(|(n, l)| (*n, label_id(l)))
        .collect();
    let names: BTreeMap<LabelId, &str> = inputs.seeds.values().map(|l| (label_id(l), l.as_str())).collect();
    let rule = params.spread_rule();
    let mut y: BTreeMap<u64, Vec<(LabelId, i64)>> = BTreeMap::new();
    for (node, label) in &seeds {
        y.insert(*node, spread(Some(*label), 0, &[], &rule));
    }
    for _ in 0..params.label_hops {
        let mut next = BTreeMap::new();
        for node in inputs.nodes.keys() {
            let mut sums: BTreeMap<LabelId, i64> = BTreeMap::new();
            for dst in edges_of(node) {
                for (label, score) in y.get(dst).into_iter().flatten() {
                    *sums.entry(*label).or_default() += score;
                }
            }
            let sums: Vec<(LabelId, i64)> = sums.into_iter().collect();
            let scores = spread(seeds.get(node).copied(), edges_of(node).len() as i64, &sums, &rule);
            if !scores.is_empty() {
                next.insert(*node, scores);
            }
        }
        y = next;
    }
    let labels = y
        .into_iter()
        .map(|(node, scores)| {
            let mut named: Vec<(String, i64)> =
                scores.into_iter().map(|(label, score)| (names[&label].to_owned(), score)).collect();
            named.sort();
            (node, named)
        })
        .collect();

    // Union-find over mutual close edges; a component is named by its smallest id.
    let mut parent: BTreeMap<u64, u64> = inputs.nodes.keys().map(|n| (*n, *n)).collect();
    fn root(parent: &mut BTreeMap<u64, u64>, mut n: u64) -> u64 {
        while parent[&n] != n {
            let up = parent[&parent[&n]];
            parent.insert(n, up);
            n = up;
        }
        n
    }
    for &(a, b, close) in &inputs.edges {
        if close && a != b && inputs.edges.contains(&(b, a, true)) && parent.contains_key(&a) && parent.contains_key(&b)
        {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            let (low, high) = (ra.min(rb), ra.max(rb));
            parent.insert(high, low);
        }
    }
    let nodes: Vec<u64> = inputs.nodes.keys().copied().collect();
    let clusters = nodes.into_iter().map(|n| (n, root(&mut parent, n))).collect();
    Outputs { embeddings: h, labels, clusters }
}
