//! Scheduling the embedding stage under load: priority lanes, round-robin across spaces, per-space rate limits,
//! shedding, and batches that grow with the queue.
//!
//! Windows wait in lanes — critical, high, normal, low, and last the windows of spaces over their rate limit
//! (critical windows are never held back by a limit) — and within a lane the spaces take turns, so a space with a
//! large backlog cannot starve one with a trickle. A batch takes up to `max_batch` windows from the front lanes; while
//! fewer than `min_batch` are queued it waits up to `max_wait` for more. With shedding on, a queue longer than
//! `shed_queue_windows` drops low-priority windows, then normal ones, oldest first and from the space with the most
//! queued; high and critical windows are never dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::FieldError;
use crate::record::Priority;

/// `[scheduling]`: how the embedding stage orders its work when it cannot keep up.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Fewest windows per call to the model while the queue is short.
    pub min_batch: usize,
    /// Milliseconds the oldest queued window may wait for a batch of `min_batch` to form.
    pub max_wait_ms: u64,
    /// Drop low-priority (then normal) windows when the queue grows past `shed_queue_windows`; each leaves a dead
    /// letter. Off: the source reads more slowly instead and Kafka lag grows.
    pub shed: bool,
    /// Queued windows above which shedding starts.
    pub shed_queue_windows: usize,
    /// Windows per second each listed space may embed; beyond it, its windows (but critical ones) wait until every
    /// other space's are done.
    pub space_rate_limits: BTreeMap<String, f64>,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            min_batch: 1,
            max_wait_ms: 0,
            shed: false,
            shed_queue_windows: 1_024,
            space_rate_limits: BTreeMap::new(),
        }
    }
}

impl SchedulingConfig {
    /// Validates against the model's largest batch.
    pub fn build(&self, max_batch: usize) -> Result<SchedulingSpec, FieldError> {
        if self.min_batch == 0 || self.min_batch > max_batch {
            return Err(FieldError::new(
                "min_batch",
                format!("{} is outside 1..=embed.max_batch ({max_batch})", self.min_batch),
            ));
        }
        if self.shed_queue_windows == 0 {
            return Err(FieldError::new("shed_queue_windows", "must be at least 1"));
        }
        for (space, rate) in &self.space_rate_limits {
            if rate.is_nan() || *rate <= 0.0 {
                return Err(FieldError::new(
                    "space_rate_limits",
                    format!("space '{space}': {rate} is not a positive rate"),
                ));
            }
        }
        Ok(SchedulingSpec {
            min_batch: self.min_batch,
            max_batch,
            max_wait: Duration::from_millis(self.max_wait_ms),
            shed_above: self.shed.then_some(self.shed_queue_windows),
            rate_limits: self.space_rate_limits.clone(),
        })
    }
}

/// Validated scheduling parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulingSpec {
    /// Fewest windows per batch while the queue is short.
    pub min_batch: usize,
    /// Most windows per batch.
    pub max_batch: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Queue length above which windows are shed; `None` never sheds.
    pub shed_above: Option<usize>,
    /// Windows per second per listed space.
    pub rate_limits: BTreeMap<String, f64>,
}

/// One queued item.
#[derive(Debug)]
pub struct Entry<T> {
    /// What was queued.
    pub item: T,
    /// Its space.
    pub space: String,
    /// Its priority.
    pub priority: Priority,
    /// When it was queued.
    pub queued_at: Instant,
}

/// The lanes in scheduling order: the four priorities, then windows of spaces over their rate limit.
const LANES: usize = 5;
const OVER_LIMIT: usize = 4;

fn lane_of(priority: Priority) -> usize {
    match priority {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The queue in front of the model; dataflow-agnostic.
pub struct Scheduler<T> {
    spec: SchedulingSpec,
    /// Per lane, per space, oldest first; `turn` is the space a lane serves next.
    lanes: [BTreeMap<String, VecDeque<Entry<T>>>; LANES],
    turn: [Option<String>; LANES],
    buckets: HashMap<String, TokenBucket>,
    len: usize,
}

/// What a scheduling step decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is queued.
    Idle,
    /// Wait this long for a fuller batch.
    Wait(Duration),
    /// Take a batch of this many.
    Run(usize),
}

impl<T> Scheduler<T> {
    /// An empty queue.
    pub fn new(spec: SchedulingSpec) -> Self {
        Scheduler { spec, lanes: Default::default(), turn: Default::default(), buckets: HashMap::new(), len: 0 }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item`; a space over its rate limit goes to the last lane (critical items excepted).
    pub fn push(&mut self, item: T, space: &str, priority: Priority, now: Instant) {
        let mut lane = lane_of(priority);
        if priority != Priority::Critical
            && let Some(&rate) = self.spec.rate_limits.get(space)
        {
            let bucket = self.buckets.entry(space.to_owned()).or_insert_with(|| TokenBucket {
                rate,
                capacity: rate.max(1.0),
                tokens: rate.max(1.0),
                at: now,
            });
            if !bucket.take(now) {
                lane = OVER_LIMIT;
            }
        }
        let entry = Entry { item, space: space.to_owned(), priority, queued_at: now };
        self.lanes[lane].entry(space.to_owned()).or_default().push_back(entry);
        self.len += 1;
    }

    /// What to do now: with the input still open, a short queue waits up to `max_wait` to fill a batch; once the input
    /// has ended (`draining`), whatever is queued runs.
    pub fn step(&self, now: Instant, draining: bool) -> Step {
        if self.len == 0 {
            return Step::Idle;
        }
        if self.len >= self.spec.min_batch || draining {
            return Step::Run(self.len.min(self.spec.max_batch));
        }
        let oldest = self.lanes.iter().flat_map(|l| l.values()).filter_map(|q| q.front()).map(|e| e.queued_at).min();
        let waited = oldest.map_or(Duration::ZERO, |t| now.duration_since(t));
        if waited >= self.spec.max_wait { Step::Run(self.len) } else { Step::Wait(self.spec.max_wait - waited) }
    }

    /// Takes up to `n` items: front lanes first, spaces taking turns within a lane.
    pub fn take(&mut self, n: usize) -> Vec<Entry<T>> {
        let mut batch = Vec::with_capacity(n.min(self.len));
        for lane in 0..LANES {
            while batch.len() < n && !self.lanes[lane].is_empty() {
                let space = self.next_space(lane);
                let queue = self.lanes[lane].get_mut(&space).expect("a queued space");
                batch.push(queue.pop_front().expect("queues in a lane are never empty"));
                if queue.is_empty() {
                    self.lanes[lane].remove(&space);
                }
            }
        }
        self.len -= batch.len();
        batch
    }

    /// The space whose turn it is in `lane`, advancing the turn.
    fn next_space(&mut self, lane: usize) -> String {
        let spaces = &self.lanes[lane];
        let next = match &self.turn[lane] {
            Some(last) => {
                spaces.range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)).next()
            }
            None => None,
        }
        .or_else(|| spaces.iter().next())
        .map(|(space, _)| space.clone())
        .expect("a lane with items has a space");
        self.turn[lane] = Some(next.clone());
        next
    }

    /// With shedding on, drops low then normal items until at most `shed_queue_windows` remain: oldest first, from
    /// the space with the most queued of that priority. Returns what was dropped.
    pub fn shed(&mut self) -> Vec<Entry<T>> {
        let Some(limit) = self.spec.shed_above else { return Vec::new() };
        let mut dropped = Vec::new();
        for priority in [Priority::Low, Priority::Normal] {
            while self.len > limit {
                let lanes = [lane_of(priority), OVER_LIMIT];
                // The space holding the most items of this priority, across its lane and the over-limit lane.
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for lane in lanes {
                    for (space, queue) in &self.lanes[lane] {
                        *counts.entry(space).or_default() += queue.iter().filter(|e| e.priority == priority).count();
                    }
                }
                let Some((space, _)) = counts.into_iter().filter(|(_, n)| *n > 0).max_by_key(|(_, n)| *n) else {
                    break;
                };
                let space = space.to_owned();
                let oldest = lanes
                    .into_iter()
                    .filter_map(|lane| {
                        let queue = self.lanes[lane].get(&space)?;
                        let at = queue.iter().position(|e| e.priority == priority)?;
                        Some((queue[at].queued_at, lane, at))
                    })
                    .min_by_key(|(t, _, _)| *t);
                let Some((_, lane, at)) = oldest else { break };
                let queue = self.lanes[lane].get_mut(&space).expect("found above");
                dropped.push(queue.remove(at).expect("found above"));
                if queue.is_empty() {
                    self.lanes[lane].remove(&space);
                }
                self.len -= 1;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(min_batch: usize, max_batch: usize, shed: Option<usize>, limits: &[(&str, f64)]) -> Scheduler<u32> {
        Scheduler::new(SchedulingSpec {
            min_batch,
            max_batch,
            max_wait: Duration::from_millis(20),
            shed_above: shed,
            rate_limits: limits.iter().map(|(s, r)| (s.to_string(), *r)).collect(),
        })
    }

    fn items(batch: Vec<Entry<u32>>) -> Vec<u32> {
        batch.into_iter().map(|e| e.item).collect()
    }

    #[test]
    fn higher_priorities_go_first_and_spaces_take_turns() {
        let mut s = scheduler(1, 8, None, &[]);
        let now = Instant::now();
        for i in 0..4 {
            s.push(i, "hot", Priority::Normal, now);
        }
        s.push(10, "quiet", Priority::Normal, now);
        s.push(20, "hot", Priority::Low, now);
        s.push(30, "quiet", Priority::Critical, now);
        assert_eq!(items(s.take(4)), vec![30, 0, 10, 1]);
        assert_eq!(items(s.take(8)), vec![2, 3, 20]);
        assert!(s.is_empty());
    }

    #[test]
    fn batches_grow_with_the_queue_and_short_queues_wait_briefly() {
        let mut s = scheduler(4, 16, None, &[]);
        let now = Instant::now();
        assert_eq!(s.step(now, false), Step::Idle);
        s.push(1, "a", Priority::Normal, now);
        assert_eq!(s.step(now, false), Step::Wait(Duration::from_millis(20)));
        assert_eq!(s.step(now + Duration::from_millis(25), false), Step::Run(1));
        assert_eq!(s.step(now, true), Step::Run(1));
        for i in 0..40 {
            s.push(i, "a", Priority::Normal, now);
        }
        assert_eq!(s.step(now, false), Step::Run(16));
    }

    #[test]
    fn a_space_over_its_rate_limit_waits_behind_the_others() {
        let mut s = scheduler(1, 100, None, &[("hot", 2.0)]);
        let now = Instant::now();
        for i in 0..5 {
            s.push(i, "hot", Priority::Normal, now);
        }
        s.push(100, "calm", Priority::Low, now);
        s.push(200, "hot", Priority::Critical, now);
        // Two hot windows fit the bucket; the rest wait behind even the calm space's low-priority window.
        assert_eq!(items(s.take(100)), vec![200, 0, 1, 100, 2, 3, 4]);
        // The bucket refills with time.
        s.push(5, "hot", Priority::Normal, now + Duration::from_secs(1));
        s.push(101, "calm", Priority::Low, now + Duration::from_secs(1));
        assert_eq!(items(s.take(100)), vec![5, 101]);
    }

    #[test]
    fn shedding_drops_low_then_normal_from_the_biggest_backlog_and_never_high_or_critical() {
        let mut s = scheduler(1, 100, Some(4), &[]);
        let now = Instant::now();
        for i in 0..3 {
            s.push(i, "hot", Priority::Low, now + Duration::from_millis(i as u64));
            s.push(10 + i, "hot", Priority::Normal, now);
            s.push(20 + i, "hot", Priority::Critical, now);
        }
        s.push(30, "calm", Priority::Low, now);
        s.push(40, "calm", Priority::High, now);
        let dropped = items(s.shed());
        assert_eq!(dropped, vec![0, 1, 2, 30, 10, 11, 12]);
        assert_eq!(s.len(), 4);
        assert_eq!(items(s.take(10)), vec![20, 21, 22, 40]);
        let mut unbounded = scheduler(1, 100, None, &[]);
        unbounded.push(1, "a", Priority::Low, now);
        assert!(unbounded.shed().is_empty());
    }
}
