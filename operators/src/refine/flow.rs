//! The refinement as a differential dataflow: nodes, kNN edges and seed labels in, refined embeddings, label scores
//! and clusters out, each kept up to date by the differences of what changed — and the [`Refiner`] that feeds one
//! worker's share of it in rounds and collects what came out.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use differential_dataflow::input::InputSession;
use differential_dataflow::operators::Iterate;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use simsimd::f16;
use timely::dataflow::ProbeHandle;
use timely::dataflow::Scope;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe};
use timely::worker::Worker;

use super::config::RefineParams;
use super::knn::{self, Edge, KnnGraph};
use super::rules::{self, Fixed, LabelId, combine, spread};

/// The fixed-point embedding fed for a node whose embedding is held in half precision.
fn fixed_of(half: &[f16]) -> Fixed {
    rules::to_fixed(&half.iter().map(|x| x.to_f32()).collect::<Vec<_>>())
}

/// What a node's refined embedding is made from at one hop: its own embedding, and each neighbour's embedding of the
/// hop before (with the neighbour's id, so that values stay distinct and order by it). The embeddings are shared
/// ([`Fixed`]): a value costs a pointer in the records and arrangements that hold it, and a node holds one per
/// neighbour.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum HopInput {
    Own(Fixed),
    Neighbour(u64, Fixed),
}

/// What a node's label scores are computed from at one hop, each with a difference that differential sums in place
/// (as [`Mix`] does for embeddings), so that a node holds one value per label its neighbours carry rather than one
/// per neighbour's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum LabelInput {
    /// The node's out-edges: the difference counts them (the node's degree).
    Edge,
    /// The node's own given label.
    Seed(LabelId),
    /// A label its neighbours carry: the difference is their scores for it, summed.
    Score(LabelId),
}

/// The refinement's outputs as collections.
pub struct Refined<'scope> {
    /// `(node, refined embedding)` in fixed point.
    pub embeddings: VecCollection<'scope, u64, (u64, Fixed), isize>,
    /// `(node, (label, score))` for every label that reached the node.
    pub labels: VecCollection<'scope, u64, (u64, (LabelId, i64)), isize>,
    /// `(label, its text)` for every seed given.
    pub names: VecCollection<'scope, u64, (LabelId, String), isize>,
    /// `(node, cluster)`: the smallest id in its component of mutual close neighbours.
    pub clusters: VecCollection<'scope, u64, (u64, u64), isize>,
}

/// Builds the refinement over `nodes` (id, own embedding in fixed point), `edges` and `seeds` (id, label): the
/// same computation as [`super::oracle::refine`], incrementally. Keys spread over the workers by hash.
pub fn refine<'scope>(
    nodes: VecCollection<'scope, u64, (u64, Fixed), isize>,
    edges: VecCollection<'scope, u64, Edge, isize>,
    seeds: VecCollection<'scope, u64, (u64, String), isize>,
    params: &RefineParams,
) -> Refined<'scope> {
    let nodes = nodes.arrange_by_key();
    let edges_by_dst = edges.clone().map(|(src, dst, _)| (dst, src)).arrange_by_key();

    // Embedding propagation: each hop takes the node's own embedding and its neighbours' of the hop before, and mixes.
    let own = nodes.clone().as_collection(|node, h| (*node, HopInput::Own(h.clone())));
    let alpha = params.alpha;
    let mut embeddings = nodes.clone();
    for _ in 0..params.hops {
        let neighbours = edges_by_dst
            .clone()
            .join_core(embeddings, |dst, src, h| Some((*src, HopInput::Neighbour(*dst, h.clone()))));
        embeddings = own
            .clone()
            .concat(neighbours)
            .reduce(move |_node, input: &[(&HopInput, isize)], out: &mut Vec<(Fixed, isize)>| {
                let (mut own, mut n, mut sum) = (None, 0i64, Vec::<i32>::new());
                for (value, diff) in input {
                    match value {
                        HopInput::Own(h) => own = Some(h),
                        HopInput::Neighbour(_, h) => {
                            n += *diff as i64;
                            sum.resize(sum.len().max(h.len()), 0);
                            for (s, x) in sum.iter_mut().zip(h.iter()) {
                                *s = s.wrapping_add(i32::from(*x).wrapping_mul(*diff as i32));
                            }
                        }
                    }
                }
                // A node is refined from its own embedding: edges of a node not (or no longer) fed make nothing.
                if let Some(own) = own {
                    out.push((combine(own, n, &sum, alpha), 1));
                }
            })
            .arrange_by_key();
    }
    let refined = embeddings.as_collection(|node, h| (*node, h.clone()));

    // Label propagation: seeds on known nodes start at full score; each hop takes the degree, the seed and the
    // neighbours' scores.
    let names = seeds.clone().map(|(_, label)| (rules::label_id(&label), label));
    let seeds = seeds.map(|(node, label)| (node, rules::label_id(&label)));
    let seeds = seeds.arrange_by_key().join_core(nodes.clone(), |node, label, _| Some((*node, *label)));
    let base = edges
        .clone()
        .map(|(src, _, _)| (src, LabelInput::Edge))
        .concat(seeds.clone().map(|(node, label)| (node, LabelInput::Seed(label))));
    let rule = params.spread_rule();
    let mut labels = seeds.map(|(node, label)| (node, (label, rules::SCORE_ONE))).arrange_by_key();
    for _ in 0..params.label_hops {
        let scores = edges_by_dst
            .clone()
            .join_core(labels, |_dst, src, (label, score)| Some((*src, *label, *score)))
            .explode(|(src, label, score)| Some(((src, LabelInput::Score(label)), score as isize)));
        labels = base
            .clone()
            .concat(scores)
            .reduce(move |_node, input: &[(&LabelInput, isize)], out: &mut Vec<((LabelId, i64), isize)>| {
                // Values come sorted, so the sums come out sorted by label.
                let (mut n, mut seed, mut sums) = (0i64, None, Vec::<(LabelId, i64)>::new());
                for (value, diff) in input {
                    match **value {
                        LabelInput::Edge => n = *diff as i64,
                        LabelInput::Seed(label) => seed = Some(label),
                        LabelInput::Score(label) => sums.push((label, *diff as i64)),
                    }
                }
                out.extend(spread(seed, n, &sums, &rule).into_iter().map(|s| (s, 1)));
            })
            .arrange_by_key();
    }
    let labels = labels.as_collection(|node, score| (*node, *score));

    // Clusters: components of the mutual close edges, each named by its smallest id.
    let mutual = edges
        .filter(|(_, _, close)| *close)
        .map(|(a, b, _)| (a.min(b), a.max(b)))
        .count()
        .filter(|(_, both)| *both == 2)
        .flat_map(|((a, b), _)| [(a, b), (b, a)])
        .arrange_by_key();
    let ids = nodes.clone().as_collection(|node, _| (*node, *node));
    let clusters = ids.clone().iterate(|inner, named| {
        let mutual = mutual.clone().enter(inner);
        let ids = ids.clone().enter(inner);
        named
            .join_core(mutual, |_node, name, neighbour| Some((*neighbour, *name)))
            .concat(ids)
            .reduce(|_node, input: &[(&u64, isize)], out: &mut Vec<(u64, isize)>| out.push((*input[0].0, 1)))
    });
    Refined { embeddings: refined, labels, names, clusters }
}

type Captured<D> = Rc<RefCell<Vec<(D, u64, isize)>>>;

fn capture<'scope, D: ExchangeData>(
    collection: VecCollection<'scope, u64, D, isize>,
    probe: &ProbeHandle<u64>,
) -> Captured<D> {
    let captured: Captured<D> = Rc::new(RefCell::new(Vec::new()));
    let sink = captured.clone();
    collection.inspect(move |update| sink.borrow_mut().push(update.clone())).probe_with(probe);
    captured
}

type Names = Rc<RefCell<HashMap<LabelId, String>>>;

/// Every worker learns every label's text, whichever worker was given it; texts are kept once learnt.
fn capture_names<'scope>(
    names: VecCollection<'scope, u64, (LabelId, String), isize>,
    probe: &ProbeHandle<u64>,
) -> Names {
    let learnt: Names = Rc::new(RefCell::new(HashMap::new()));
    let sink = learnt.clone();
    names
        .inner
        .broadcast()
        .inspect(move |((id, name), _, diff)| {
            if *diff > 0 {
                sink.borrow_mut().insert(*id, name.clone());
            }
        })
        .probe_with(probe);
    learnt
}

/// A node's score for a label.
pub type LabelScore = (u64, (String, i64));

/// A node's score for a label, as the dataflow carries it.
type LabelIdScore = (u64, (LabelId, i64));

/// What one round changed, consolidated: `+1` for what holds now, `-1` for what no longer does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Refined embeddings.
    pub embeddings: Vec<((u64, Fixed), isize)>,
    /// Label scores.
    pub labels: Vec<(LabelScore, isize)>,
    /// Cluster names.
    pub clusters: Vec<((u64, u64), isize)>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.embeddings.is_empty() && self.labels.is_empty() && self.clusters.is_empty()
    }
}

fn drain_until<D: Ord + Clone>(captured: &Captured<D>, round: u64) -> Vec<(D, isize)> {
    let mut all = captured.borrow_mut();
    let mut taken = Vec::new();
    all.retain(|(data, time, diff)| {
        if *time <= round {
            taken.push((data.clone(), *diff));
            false
        } else {
            true
        }
    });
    differential_dataflow::consolidation::consolidate(&mut taken);
    taken
}

/// One worker's share of the refinement: it keeps the kNN graph of the spaces the worker indexes, feeds nodes, edge
/// changes and labels to the dataflow in rounds, and hands back each settled round's output changes for the keys
/// this worker holds.
pub struct Refiner {
    graph: KnnGraph,
    seeds: HashMap<u64, String>,
    nodes: InputSession<u64, (u64, Fixed), isize>,
    /// Each node's own embedding in half precision: what its neighbour searches compare, and what its fixed-point
    /// embedding is made from, so that a retirement retracts exactly what was fed (the index may since have moved its
    /// vector to a lossy tier).
    own: HashMap<u64, Vec<f16>>,
    edges: InputSession<u64, Edge, isize>,
    labels: InputSession<u64, (u64, String), isize>,
    probe: ProbeHandle<u64>,
    embeddings: Captured<(u64, Fixed)>,
    scores: Captured<LabelIdScore>,
    names: Names,
    /// The text of each label id this worker was given, to refuse a second text with the same id.
    given: HashMap<LabelId, String>,
    clusters: Captured<(u64, u64)>,
    changes: Vec<(Edge, isize)>,
    /// Rounds closed and not yet settled, with when they closed.
    open_rounds: Vec<(u64, Instant)>,
}

impl Refiner {
    /// Builds the refinement dataflow in `worker`; every worker of the job must build one.
    pub fn new(worker: &mut Worker, params: &RefineParams) -> Refiner {
        let (mut nodes, mut edges, mut labels) = (InputSession::new(), InputSession::new(), InputSession::new());
        let probe = ProbeHandle::new();
        let params_in = params.clone();
        let (embeddings, scores, names, clusters) = worker.dataflow::<u64, _, _>(|scope: Scope<'_, u64>| {
            let refined =
                refine(nodes.to_collection(scope), edges.to_collection(scope), labels.to_collection(scope), &params_in);
            (
                capture(refined.embeddings, &probe),
                capture(refined.labels, &probe),
                capture_names(refined.names, &probe),
                capture(refined.clusters, &probe),
            )
        });
        Refiner {
            graph: KnnGraph::new(params.k, params.cluster_max_distance),
            seeds: HashMap::new(),
            nodes,
            own: HashMap::new(),
            edges,
            labels,
            probe,
            embeddings,
            scores,
            names,
            given: HashMap::new(),
            clusters,
            changes: Vec::new(),
            open_rounds: Vec::new(),
        }
    }

    /// The kNN graph of this worker's spaces.
    pub fn graph(&self) -> &KnnGraph {
        &self.graph
    }

    /// For each query `(node, unit embedding)`, in order, its `k` nearest among the nodes `held` (those of them this
    /// refiner holds) and the queries before it: an exact search over half-precision embeddings (see
    /// [`knn::nearest`]).
    pub fn nearest(
        &self,
        held: impl IntoIterator<Item = u64>,
        queries: &[(u64, &[f32])],
        k: usize,
    ) -> Vec<Vec<(u64, f32)>> {
        let held: Vec<(u64, &[f16])> =
            held.into_iter().filter_map(|node| Some((node, self.own.get(&node)?.as_slice()))).collect();
        let halves: Vec<Vec<f16>> = queries.iter().map(|(_, unit)| knn::half(unit)).collect();
        let queries: Vec<(u64, &[f16])> =
            queries.iter().zip(&halves).map(|((node, _), half)| (*node, half.as_slice())).collect();
        knn::nearest(&held, &queries, k)
    }

    /// Adds a node with its unit embedding and the neighbours found for it; false if it was present.
    pub fn add(&mut self, node: u64, unit: &[f32], found: &[(u64, f32)]) -> bool {
        if !self.graph.add(node, found, &mut self.changes) {
            return false;
        }
        self.feed_node(node, unit);
        for (edge, diff) in self.changes.drain(..) {
            self.edges.update(edge, diff);
        }
        true
    }

    fn feed_node(&mut self, node: u64, unit: &[f32]) {
        let half = knn::half(unit);
        self.nodes.insert((node, fixed_of(&half)));
        if let Some(before) = self.own.insert(node, half) {
            self.nodes.remove((node, fixed_of(&before)));
        }
    }

    /// Retires `node`: retracts it, its edges in both directions and its given label, so that every output that
    /// depended on it is revised and its own outputs are retracted. Returns whether it was in the graph.
    pub fn retire(&mut self, node: u64) -> bool {
        if !self.graph.remove(node, &mut self.changes) {
            return false;
        }
        if let Some(own) = self.own.remove(&node) {
            self.nodes.remove((node, fixed_of(&own)));
        }
        for (edge, diff) in self.changes.drain(..) {
            self.edges.update(edge, diff);
        }
        if let Some(label) = self.seeds.remove(&node) {
            self.labels.remove((node, label));
        }
        true
    }

    /// Takes over a saved graph: its edges go to the dataflow now; each node's embedding follows through
    /// [`Refiner::restore_node`].
    pub fn restore_graph(&mut self, saved: KnnGraph) {
        let saved = saved.restored();
        for edge in saved.edges() {
            self.edges.insert(edge);
        }
        self.graph = saved;
    }

    /// Gives a node of the restored graph its embedding.
    pub fn restore_node(&mut self, node: u64, unit: &[f32]) {
        self.feed_node(node, unit);
    }

    /// Gives `node` the label `label`, or takes its label away (`None`); a previous label is retracted. Refuses a
    /// label whose id (see [`rules::label_id`]) another label given here already has.
    pub fn label(&mut self, node: u64, label: Option<String>) -> Result<(), String> {
        if let Some(new) = &label {
            let known = self.given.entry(rules::label_id(new)).or_insert_with(|| new.clone());
            if known != new {
                return Err(format!(
                    "label {new:?} of segment {node:016x} has the same 64-bit id as label {known:?}; rename one of them"
                ));
            }
        }
        let previous = match &label {
            Some(new) => self.seeds.insert(node, new.clone()),
            None => self.seeds.remove(&node),
        };
        if previous == label {
            return Ok(());
        }
        if let Some(old) = previous {
            self.labels.remove((node, old));
        }
        if let Some(new) = label {
            self.labels.insert((node, new));
        }
        Ok(())
    }

    /// The round being gathered: what is fed now is refined when it closes.
    pub fn round(&self) -> u64 {
        *self.nodes.time()
    }

    /// Closes the current round: what was added since is refined together. Returns the round closed.
    pub fn advance(&mut self) -> u64 {
        let round = *self.nodes.time();
        let next = round + 1;
        self.nodes.advance_to(next);
        self.edges.advance_to(next);
        self.labels.advance_to(next);
        self.nodes.flush();
        self.edges.flush();
        self.labels.flush();
        self.open_rounds.push((round, Instant::now()));
        round
    }

    /// Whether every worker's outputs for `round` are complete.
    pub fn settled(&self, round: u64) -> bool {
        !self.probe.less_equal(&round)
    }

    /// The changes of every settled round not taken yet, with the latest settled round and how long ago the oldest
    /// of them closed; `None` when no new round settled.
    pub fn take(&mut self) -> Option<(u64, std::time::Duration, Changes)> {
        let settled: Vec<(u64, Instant)> = self.open_rounds.iter().copied().filter(|(r, _)| self.settled(*r)).collect();
        let (last, _) = *settled.last()?;
        let oldest = settled[0].1.elapsed();
        self.open_rounds.retain(|(r, _)| *r > last);
        let changes = Changes {
            embeddings: drain_until(&self.embeddings, last),
            labels: self.named(drain_until(&self.scores, last)),
            clusters: drain_until(&self.clusters, last),
        };
        Some((last, oldest, changes))
    }

    /// Label scores with each label's text for its id.
    fn named(&self, scores: Vec<(LabelIdScore, isize)>) -> Vec<(LabelScore, isize)> {
        let names = self.names.borrow();
        let name = |id: &LabelId| names.get(id).cloned().unwrap_or_else(|| format!("label-{id:016x}"));
        scores.into_iter().map(|((node, (id, score)), diff)| ((node, (name(&id), score)), diff)).collect()
    }

    /// Rounds closed and not settled yet.
    pub fn behind(&self) -> usize {
        self.open_rounds.len()
    }

    /// Closes the last round and ends this worker's input; the dataflow completes once every worker's has ended.
    /// Returns the last round, whose changes [`Refiner::take`] gives once it settles.
    pub fn close(&mut self) -> u64 {
        let round = self.advance();
        drop(std::mem::replace(&mut self.nodes, InputSession::new()));
        drop(std::mem::replace(&mut self.edges, InputSession::new()));
        drop(std::mem::replace(&mut self.labels, InputSession::new()));
        round
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::refine::{RefineConfig, Refinements, oracle};

    /// A small deterministic generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 31) as f64
        }
    }

    /// Points around a few centres, as unit vectors.
    fn points(rng: &mut Rng, n: usize, dim: usize) -> Vec<Vec<f32>> {
        let centres: Vec<Vec<f64>> = (0..4).map(|_| (0..dim).map(|_| rng.unit() - 0.5).collect()).collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let v: Vec<f64> = c.iter().map(|x| x + (rng.unit() - 0.5) * 0.4).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| (x / norm) as f32).collect()
            })
            .collect()
    }

    /// The `k + 2` nearest present points by brute force, some dropped to stand in for an approximate index.
    fn found(rng: &mut Rng, points: &[Vec<f32>], present: &[usize], node: usize, k: usize) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = present
            .iter()
            .map(|&j| {
                let dot: f32 = points[node].iter().zip(&points[j]).map(|(a, b)| a * b).sum();
                (j as u64, 1.0 - dot)
            })
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(k + 2);
        all.retain(|_| rng.below(5) != 0);
        all
    }

    fn random_params(rng: &mut Rng) -> RefineParams {
        RefineConfig {
            k: 1 + rng.below(5) as usize,
            alpha: [0.0, 0.3, 0.5, 1.0][rng.below(4) as usize],
            hops: rng.below(4) as usize,
            label_restart: [0.0, 0.01, 0.2, 0.5][rng.below(4) as usize],
            label_top: 1 + rng.below(3) as usize,
            label_hops: 1 + rng.below(5) as usize,
            min_label_score: [0.0, 0.001, 0.05][rng.below(3) as usize],
            cluster_max_distance: [0.02, 0.1, 0.3][rng.below(3) as usize],
            ..Default::default()
        }
        .build(std::path::Path::new("."))
        .unwrap()
    }

    /// One round of a history: the nodes added (each with what the index found), the label operations, then the nodes
    /// retired.
    type Round = (Vec<(usize, Vec<(u64, f32)>)>, Vec<(u64, Option<String>)>, Vec<u64>);

    /// One random history: nodes arrive in random rounds, labels are given, changed and retracted, and nodes are
    /// retired — the oldest beyond a horizon, or any at random — after which newcomers find only live ones.
    struct History {
        params: RefineParams,
        points: Vec<Vec<f32>>,
        rounds: Vec<Round>,
    }

    fn history(seed: u64) -> History {
        history_within(seed, None)
    }

    /// A random history; with `horizon`, the oldest nodes beyond it are retired at the end of each round.
    fn history_within(seed: u64, horizon: Option<usize>) -> History {
        let mut rng = Rng(seed);
        let params = random_params(&mut rng);
        let n = 20 + rng.below(50) as usize;
        let points = points(&mut rng, n, 6);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (mut present, mut rounds) = (Vec::new(), Vec::new());
        let horizon = horizon.unwrap_or([usize::MAX, 8, 15, 30][rng.below(4) as usize]);
        let mut at = 0;
        while at < n || rounds.len() < 3 {
            let take = (1 + rng.below(8) as usize).min(n - at);
            let mut added = Vec::new();
            for &node in &order[at..at + take] {
                added.push((node, found(&mut rng, &points, &present, node, params.k)));
                present.push(node);
            }
            at += take;
            let labels = (0..rng.below(4))
                .map(|_| {
                    // Labels also name nodes that have not arrived yet.
                    let node = rng.below(n as u64);
                    let label = (rng.below(4) != 0).then(|| ["owl", "wren", "frog"][rng.below(3) as usize].to_owned());
                    (node, label)
                })
                .collect();
            let mut retired = Vec::new();
            while present.len() > horizon {
                retired.push(present.remove(0) as u64);
            }
            for _ in 0..rng.below(3) {
                if !present.is_empty() && rng.below(3) == 0 {
                    retired.push(present.remove(rng.below(present.len() as u64) as usize) as u64);
                }
            }
            rounds.push((added, labels, retired));
        }
        History { params, points, rounds }
    }

    fn oracle_inputs(refiner: &Refiner, history: &History, seeds: &BTreeMap<u64, String>) -> oracle::Inputs {
        oracle::Inputs {
            nodes: (refiner.graph().iter())
                .map(|(node, _)| (node, fixed_of(&knn::half(&history.points[node as usize]))))
                .collect(),
            edges: refiner.graph().edges().collect::<BTreeSet<_>>(),
            seeds: seeds.clone(),
        }
    }

    #[test]
    fn incremental_refinement_equals_from_scratch_after_every_round() {
        for seed in 0..24 {
            equals_from_scratch_after_every_round(seed, history(seed));
        }
    }

    #[test]
    fn r15_with_segments_retired_the_outputs_equal_from_scratch_over_the_live_ones_after_every_round() {
        let mut retired = 0;
        for seed in 200..224 {
            let history = history_within(seed, Some(5 + seed as usize % 20));
            retired += history.rounds.iter().map(|(_, _, r)| r.len()).sum::<usize>();
            equals_from_scratch_after_every_round(seed, history);
        }
        assert!(retired > 400, "{retired}");
    }

    /// Feeds one round of a history to `refiner`, keeping `seeds` as the oracle must see them.
    fn play(
        refiner: &mut Refiner,
        seeds: &mut BTreeMap<u64, String>,
        points: &[Vec<f32>],
        (added, labels, retired): &Round,
    ) {
        for (node, found) in added {
            refiner.add(*node as u64, &points[*node], found);
        }
        for (node, label) in labels {
            refiner.label(*node, label.clone()).unwrap();
            match label {
                Some(label) => seeds.insert(*node, label.clone()),
                None => seeds.remove(node),
            };
        }
        for node in retired {
            assert!(refiner.retire(*node), "{node} was live");
            assert!(!refiner.retire(*node));
            seeds.remove(node);
        }
    }

    /// Runs `history` on one worker; after every round the refinements equal the oracle over the graph's nodes, and
    /// nothing is left of a retired node.
    fn equals_from_scratch_after_every_round(seed: u64, history: History) {
        timely::execute_directly(move |worker| {
            let mut refiner = Refiner::new(worker, &history.params);
            let mut state = Refinements::default();
            let mut seeds = BTreeMap::new();
            for (round, step) in history.rounds.iter().enumerate() {
                play(&mut refiner, &mut seeds, &history.points, step);
                let closed = refiner.advance();
                worker.step_while(|| !refiner.settled(closed));
                if let Some((_, _, changes)) = refiner.take() {
                    state.apply(&changes);
                }
                let want = oracle::refine(&oracle_inputs(&refiner, &history, &seeds), &history.params);
                assert_eq!(state.as_outputs(), want, "seed {seed}, round {round}, {:?}", history.params);
                assert!(state.iter().all(|(node, _)| refiner.graph().contains(node)), "seed {seed}, round {round}");
            }
        });
    }

    #[test]
    fn two_workers_together_equal_from_scratch() {
        for seed in 100..104 {
            let history = Arc::new(history(seed));
            let state = Arc::new(Mutex::new(Refinements::default()));
            let want = Arc::new(Mutex::new(None));
            let (h, s, w) = (history.clone(), state.clone(), want.clone());
            timely::execute(timely::Config::process(2), move |worker| {
                let mut refiner = Refiner::new(worker, &h.params);
                let mut seeds = BTreeMap::new();
                for step in &h.rounds {
                    // Worker 0 indexes every node; worker 1 only takes its share of the keys downstream.
                    if worker.index() == 0 {
                        play(&mut refiner, &mut seeds, &h.points, step);
                    }
                    refiner.advance();
                }
                let last = refiner.close();
                worker.step_while(|| !refiner.settled(last));
                if let Some((_, _, changes)) = refiner.take() {
                    s.lock().unwrap().apply(&changes);
                }
                if worker.index() == 0 {
                    *w.lock().unwrap() = Some(oracle::refine(&oracle_inputs(&refiner, &h, &seeds), &h.params));
                }
            })
            .unwrap()
            .join();
            let want = want.lock().unwrap().take().unwrap();
            assert_eq!(state.lock().unwrap().as_outputs(), want, "seed {seed}");
        }
    }
}
