//! The refinement inside a job: a second dataflow on the same workers, fed in rounds, behind the index.
//!
//! The index operator leaves each new segment in a worker-local queue; every `refine.round_ms` the worker finds the
//! queued segments' neighbours, feeds nodes, kNN edge changes and the labels read from the
//! labels topic (worker 0) to the differential computation, and closes the round. Rounds settle while ingestion goes
//! on — nothing in the ingest dataflow waits for them. Settled changes update the refinements the query API reads,
//! and each segment whose label, label score (to 0.01), cluster changed, or that was refined for the first time,
//! gets a row in the refinements dataset and a record in the segments topic.
//!
//! Each space holds its `refine.horizon_segments` most recent segments by start time. A segment pushed out is retired
//! once its latest state is in a written file of the dataset (a final row when that state was not published yet):
//! it leaves the graph with its edges and given label, and the shared refinements keep a compact record of its last
//! label and cluster for queries. A newcomer's neighbours are found among the space's held segments (and the newcomers
//! before it) by an exact search over the embeddings the refinement holds: its cost is bounded by the horizon, not by
//! the space's index, which grows with the uptime.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_connectors::kafka::{self, Acks, LabelsSource, Producer, RefinementRecord};
use chorus_connectors::parquet::{RefinementRow, RefinementWriter};
use chorus_operators::cause::Cause;
use chorus_operators::index::{self, unit};
use chorus_operators::metrics::Metrics;
use chorus_operators::record::{DeadLetter, SegmentId};
use chorus_operators::refine::flow::Refiner;
use chorus_operators::refine::knn::KnnGraph;
use chorus_operators::refine::{RefineParams, Refinements, SharedRefinements};
use timely::worker::Worker;

use crate::config::Config;
use crate::store;

/// A new segment waiting for the refinement: space, id and embedding.
pub type Arrival = (String, u64, Vec<f32>);

/// The queue between a worker's index operator and its refinement.
pub type Arrivals = Rc<RefCell<Vec<Arrival>>>;

/// Label messages read per round at most.
const LABELS_PER_ROUND: usize = 10_000;

/// A label and its share.
type Verdict = (String, f32);

/// What was last published about a segment: label, score in hundredths, cluster.
type Published = (Option<String>, i32, Option<u64>);

/// A hash of a refined embedding, to tell whether a retiring segment's last one was published.
type RefinedHash = u64;

fn refined_hash(embedding: Option<&[i16]>) -> RefinedHash {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    embedding.hash(&mut hasher);
    hasher.finish()
}

/// Whether the refinement runs. A failure in it (a full disk under `refine.dir`, the labels topic gone) pauses it on
/// every worker with the reason, while ingestion goes on: `/readyz` says so and `chorus_refine_paused` is 1. A
/// restart resumes it from its saved graph.
#[derive(Clone, Default)]
pub struct Pause(Arc<std::sync::Mutex<Option<String>>>);

impl Pause {
    /// Pauses the refinement for `reason`, unless it is paused already.
    pub fn pause(&self, reason: String, metrics: &Metrics) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(%reason, "The refinement failed and is paused; ingestion goes on, and a restart resumes it.");
            metrics.refine_paused.set(1);
            *slot = Some(reason);
        }
    }

    /// Why the refinement is paused, if it is.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One worker's refinement.
pub struct Stage {
    refiner: Refiner,
    params: RefineParams,
    dim: usize,
    arrivals: Arrivals,
    registry: index::Registry,
    refinements: SharedRefinements,
    labels: Option<LabelsSource>,
    writer: RefinementWriter,
    producer: Producer,
    acks: Arc<Acks>,
    segments_topic: String,
    dead_letter_topic: String,
    max_message_bytes: usize,
    metrics: Metrics,
    /// What was last published of each segment held, with its refined embedding's hash.
    published: HashMap<u64, (Published, RefinedHash)>,
    /// Per space this worker indexes, the segments it holds by (start, id): the most recent `horizon_segments`.
    held: HashMap<String, BTreeSet<(i64, u64)>>,
    /// Segments pushed out of their space's horizon whose latest row waits in the writer: retired after its flush.
    retiring: Vec<(String, u64)>,
    /// Segments with a row in the writer since its last flush.
    unflushed: HashSet<u64>,
    next_round: Instant,
    last_flush: Instant,
    graph_path: PathBuf,
    last_save: Instant,
}

impl Stage {
    /// Builds the refinement dataflow on `worker`, restores this worker's saved graph and queues the indexed
    /// segments it lacks.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        worker: &mut Worker,
        config: &Config,
        registry: index::Registry,
        refinements: SharedRefinements,
        producer: Producer,
        metrics: Metrics,
        arrivals: Arrivals,
    ) -> Result<Stage, String> {
        let (index, peers) = (worker.index(), worker.peers());
        let params = config.refine.clone();
        let mut refiner = Refiner::new(worker, &params);
        let graph_path = config.state_dir.join(format!("refine-graph-{index}-of-{peers}.bin"));
        let saved: Option<KnnGraph> = match std::fs::read(&graph_path) {
            Ok(bytes) => match bincode::deserialize::<KnnGraph>(&bytes) {
                Ok(graph) if graph.built_with(params.k, params.cluster_max_distance) => Some(graph),
                Ok(_) => {
                    tracing::info!(
                        "refine.k or refine.cluster_max_distance changed: the kNN graph is rebuilt from the index."
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(path = %graph_path.display(), error = %e, "The saved kNN graph cannot be read; it is rebuilt from the index.");
                    None
                }
            },
            Err(_) => None,
        };
        let mut saved = saved.map(KnnGraph::restored);
        let restored = saved.as_ref().map_or(0, KnnGraph::len);
        let (mut queued, mut dropped) = (0, 0);
        let mut held: HashMap<String, BTreeSet<(i64, u64)>> = HashMap::new();
        let mut restore = Vec::new();
        for space in registry.spaces().into_iter().filter(|s| store::owns(s, index, peers)) {
            let Some(shared) = registry.get(&space) else { continue };
            let index = index::read(&shared);
            // The space's most recent segments are held; the saved graph's others were retired meanwhile (or
            // the horizon shrank).
            let newest: HashMap<u64, i64> = index
                .latest(params.horizon_segments)
                .into_iter()
                .map(|(id, point)| (id.0, point.start_micros))
                .collect();
            let mut retired = Vec::new();
            index.for_each_vector(|id, vector| {
                let in_saved = saved.as_ref().is_some_and(|graph| graph.contains(id.0));
                match newest.get(&id.0) {
                    Some(_) if in_saved => restore.push((id.0, vector)),
                    Some(_) => {
                        arrivals.borrow_mut().push((space.clone(), id.0, vector));
                        queued += 1;
                    }
                    None if in_saved => retired.push(id.0),
                    None => {}
                }
            });
            if let Some(graph) = saved.as_mut() {
                let mut discarded = Vec::new();
                for id in retired {
                    graph.remove(id, &mut discarded);
                    dropped += 1;
                }
            }
            let space_held = held.entry(space.clone()).or_default();
            for (id, start) in newest {
                if saved.as_ref().is_some_and(|graph| graph.contains(id)) {
                    space_held.insert((start, id));
                }
            }
        }
        if let Some(graph) = saved {
            refiner.restore_graph(graph);
        }
        for (id, vector) in restore {
            refiner.restore_node(id, &vector);
        }
        if dropped > 0 {
            tracing::info!(worker = index, dropped, "Segments of the saved graph beyond the horizon were retired.");
        }
        metrics.queued("refine", queued as i64);
        if restored + queued > 0 {
            tracing::info!(
                worker = index,
                restored,
                queued,
                "Refinement resumed: saved graph restored, the rest queued."
            );
        }
        let labels =
            if index == 0 { Some(LabelsSource::open(&config.kafka).map_err(|e| e.to_string())?) } else { None };
        Ok(Stage {
            refiner,
            dim: config.model.dim,
            arrivals,
            registry,
            refinements,
            labels,
            writer: RefinementWriter::new(
                &params.dir,
                config.model.dim,
                config.archive.zstd_level,
                &format!("{}-w{index}", std::process::id()),
            ),
            producer,
            acks: Arc::new(Acks::default()),
            segments_topic: config.kafka.segments_topic.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            max_message_bytes: config.kafka.max_message_bytes,
            metrics,
            published: HashMap::new(),
            held,
            retiring: Vec::new(),
            unflushed: HashSet::new(),
            next_round: Instant::now() + params.round,
            last_flush: Instant::now(),
            graph_path,
            last_save: Instant::now(),
            params,
        })
    }

    /// Closes a round when one is due, and publishes what settled.
    pub fn tick(&mut self) -> Result<(), String> {
        if Instant::now() >= self.next_round {
            self.next_round = Instant::now() + self.params.round;
            self.feed()?;
            self.refiner.advance();
        }
        self.collect()?;
        if self.last_save.elapsed() >= Duration::from_secs(60) {
            self.save()?;
        }
        Ok(())
    }

    /// Feeds what is left, ends the input and waits for the last round to settle; then publishes, flushes and
    /// saves the graph.
    pub fn finish(&mut self, worker: &mut Worker) -> Result<(), String> {
        self.feed()?;
        let last = self.refiner.close();
        worker.step_while(|| !self.refiner.settled(last));
        self.collect()?;
        self.flush()?;
        self.save()
    }

    /// Finds the neighbours of the queued segments and feeds them, with the labels read since the last round.
    fn feed(&mut self) -> Result<(), String> {
        let arrivals = std::mem::take(&mut *self.arrivals.borrow_mut());
        self.metrics.queued("refine", -(arrivals.len() as i64));
        let horizon = self.params.horizon_segments;
        // Each space's newcomers in arrival order, with their start times.
        let mut newcomers: BTreeMap<String, Vec<(i64, u64, Vec<f32>)>> = BTreeMap::new();
        for (space, id, embedding) in arrivals {
            let Some(shared) = self.registry.get(&space) else { continue };
            let Ok(vector) = unit(&embedding, self.dim) else { continue };
            let Some(point) = index::read(&shared).point(SegmentId(id)) else { continue };
            newcomers.entry(space).or_default().push((point.start_micros, id, vector));
        }
        let mut pushed_out = Vec::new();
        for (space, arrived) in newcomers {
            let held = self.held.entry(space.clone()).or_default();
            let queries: Vec<(u64, &[f32])> = arrived.iter().map(|(_, id, v)| (*id, v.as_slice())).collect();
            // Neighbours among the segments held and the newcomers before: exact, and bounded by the horizon.
            let found = self.refiner.nearest(held.iter().map(|(_, id)| *id), &queries, self.params.k);
            for ((start, id, vector), neighbours) in arrived.into_iter().zip(found) {
                if held.len() >= horizon && held.first().is_some_and(|oldest| (start, id) < *oldest) {
                    // Older than every segment held: it never enters.
                    self.metrics.refine_retired.with_label_values(&[&space]).inc();
                    continue;
                }
                if self.refiner.add(id, &vector, &neighbours) {
                    held.insert((start, id));
                    while held.len() > horizon {
                        let (_, oldest) = held.pop_first().expect("more than the horizon");
                        pushed_out.push((space.clone(), oldest));
                    }
                }
            }
        }
        for (space, node) in pushed_out {
            self.retire_when_written(space, node)?;
        }
        if let Some(labels) = &mut self.labels {
            for event in labels.poll(LABELS_PER_ROUND) {
                if let Ok(event) = &event
                    && self.refinements.read().unwrap_or_else(|e| e.into_inner()).retired(event.segment.0).is_some()
                {
                    self.label_retired(event.segment.0, event.label.as_deref())?;
                }
                let refused_here = event.and_then(|event| {
                    let record = kafka::label_record(&event);
                    self.refiner.label(event.segment.0, event.label).map_err(|reason| DeadLetter {
                        origin: None,
                        key: record.key,
                        headers: Vec::new(),
                        payload: record.payload,
                        reason,
                        cause: Cause::LabelValue,
                    })
                });
                match refused_here {
                    Ok(()) => {}
                    Err(letter) => {
                        self.metrics.reject("labels", letter.cause, 1);
                        tracing::warn!(reason = %letter.reason, "A label message was refused; it goes to the dead-letter topic.");
                        let record = kafka::dead_letter_record(letter, self.max_message_bytes);
                        self.producer
                            .send(&self.dead_letter_topic, &record, &self.acks, 0)
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies settled changes and publishes the segments whose published state changed.
    fn collect(&mut self) -> Result<(), String> {
        let Some((round, waited, changes)) = self.refiner.take() else {
            if self.writer.buffered() > 0 && self.last_flush.elapsed() >= Duration::from_secs(5) {
                self.flush()?;
            }
            return Ok(());
        };
        self.metrics.refine_seconds.observe(waited.as_secs_f64());
        let touched = self.refinements.write().unwrap_or_else(|e| e.into_inner()).apply(&changes);
        // Only segments whose published state changed are copied out (with their refined embedding); a retired
        // segment has no state left, and its last row stands.
        let changed: Vec<(u64, Published)> = {
            let refinements = self.refinements.read().unwrap_or_else(|e| e.into_inner());
            touched
                .iter()
                .filter_map(|&node| {
                    let now = shown(&refinements, node)?;
                    (self.published.get(&node).map(|(published, _)| published) != Some(&now)).then_some((node, now))
                })
                .collect()
        };
        let mut published = 0;
        for (node, _) in changed {
            published += usize::from(self.publish(node, round)?);
        }
        self.metrics.count("refine", touched.len(), published);
        self.count_held();
        if let Some(failure) = self.acks.failure() {
            return Err(format!("refinement records could not be delivered: {failure}"));
        }
        if self.writer.buffered() >= 65_536 || self.last_flush.elapsed() >= Duration::from_secs(5) {
            self.flush()?;
        }
        Ok(())
    }

    /// Publishes what the refinement now says of `node` (a row and a record), as of `round`; false if it says
    /// nothing or the segment is not indexed.
    fn publish(&mut self, node: u64, round: u64) -> Result<bool, String> {
        let (now, label, cluster, refined, hash) = {
            let refinements = self.refinements.read().unwrap_or_else(|e| e.into_inner());
            let Some(now) = shown(&refinements, node) else { return Ok(false) };
            let state = refinements.get(node).expect("shown states exist");
            let hash = refined_hash(state.embedding.as_deref());
            (now, refinements.label(node), state.cluster, state.refined(), hash)
        };
        let Some((space, point)) = self.locate(node) else { return Ok(false) };
        self.published.insert(node, (now, hash));
        self.write(node, space, point, label, cluster, refined, round)?;
        Ok(true)
    }

    /// Sends a refinement record and buffers its row.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        node: u64,
        space: String,
        point: index::PointInfo,
        label: Option<Verdict>,
        cluster: Option<u64>,
        refined: Option<Vec<f32>>,
        round: u64,
    ) -> Result<(), String> {
        let record = RefinementRecord {
            segment_id: SegmentId(node).to_string(),
            space: space.clone(),
            label: label.as_ref().map(|(l, _)| l.clone()),
            label_score: label.as_ref().map(|(_, s)| *s),
            cluster: cluster.map(|c| SegmentId(c).to_string()),
            round,
        };
        self.producer
            .send(&self.segments_topic, &kafka::refinement_record(&record), &self.acks, 0)
            .map_err(|e| e.to_string())?;
        self.writer.add(RefinementRow {
            id: SegmentId(node),
            space,
            sensor: point.sensor,
            start_micros: point.start_micros,
            label,
            cluster: cluster.map(SegmentId),
            refined,
            round,
        });
        self.unflushed.insert(node);
        Ok(())
    }

    /// `node` of `space` left its horizon: its latest state (refined embedding included) goes to the dataset if it
    /// has not yet, and it is retired once that row is in a written file.
    fn retire_when_written(&mut self, space: String, node: u64) -> Result<(), String> {
        let current = {
            let refinements = self.refinements.read().unwrap_or_else(|e| e.into_inner());
            shown(&refinements, node)
                .map(|now| (now, refined_hash(refinements.get(node).and_then(|state| state.embedding.as_deref()))))
        };
        if current.is_some() && current.as_ref() != self.published.get(&node) {
            self.publish(node, self.refiner.round())?;
        }
        if self.unflushed.contains(&node) {
            self.retiring.push((space, node));
        } else {
            self.retire(&space, node);
        }
        Ok(())
    }

    /// Retires `node` of `space` from the refinement: a record of what it shows stays for queries.
    fn retire(&mut self, space: &str, node: u64) {
        self.refinements.write().unwrap_or_else(|e| e.into_inner()).retire(space, node, self.params.retired_kept());
        self.refiner.retire(node);
        self.published.remove(&node);
        self.metrics.refine_retired.with_label_values(&[space]).inc();
    }

    /// A label given to a retired segment: shown on it (with a share of 1) and published with its last cluster, but
    /// not spread — the segment is not in the graph any more.
    fn label_retired(&mut self, node: u64, label: Option<&str>) -> Result<(), String> {
        let Some((space, point)) = self.locate(node) else { return Ok(()) };
        let (label, cluster) = self.refinements.write().unwrap_or_else(|e| e.into_inner()).label_retired(
            &space,
            node,
            label,
            self.params.retired_kept(),
        );
        self.write(node, space, point, label, cluster, None, self.refiner.round())
    }

    /// Sets the gauge of segments held per space: those within the horizon and those retiring.
    fn count_held(&self) {
        for (space, held) in &self.held {
            let retiring = self.retiring.iter().filter(|(s, _)| s == space).count();
            self.metrics.refine_nodes.with_label_values(&[space]).set((held.len() + retiring) as i64);
        }
    }

    /// The space and point of an indexed segment.
    fn locate(&self, node: u64) -> Option<(String, index::PointInfo)> {
        self.registry.spaces().into_iter().find_map(|space| {
            let shared = self.registry.get(&space)?;
            let point = index::read(&shared).point(SegmentId(node))?;
            Some((space, point))
        })
    }

    /// Writes the buffered rows, then retires the segments that waited for theirs.
    fn flush(&mut self) -> Result<(), String> {
        self.last_flush = Instant::now();
        self.writer.flush().map_err(|e| e.to_string())?;
        self.unflushed.clear();
        for (space, node) in std::mem::take(&mut self.retiring) {
            self.retire(&space, node);
        }
        self.count_held();
        Ok(())
    }

    /// Saves the kNN graph beside the savepoints, replacing the previous one whole and durably.
    fn save(&mut self) -> Result<(), String> {
        self.last_save = Instant::now();
        let failed =
            |e: &dyn std::fmt::Display| format!("{}: cannot save the kNN graph: {e}", self.graph_path.display());
        let bytes = bincode::serialize(self.refiner.graph()).map_err(|e| failed(&e))?;
        if let Some(dir) = self.graph_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        }
        chorus_operators::durable::replace(&self.graph_path, &bytes).map_err(|e| failed(&e))
    }
}

/// What is published of `node`: label, score in hundredths, cluster; `None` when the refinement holds nothing of it.
fn shown(refinements: &Refinements, node: u64) -> Option<Published> {
    let state = refinements.get(node)?;
    let label = refinements.label(node);
    Some((
        label.as_ref().map(|(l, _)| l.clone()),
        label.as_ref().map_or(0, |(_, s)| (s * 100.0).round() as i32),
        state.cluster,
    ))
}
