//! The segmenter: every sensor's timeline, the chunks held back while a gap before them may still be filled, and
//! the sensors moved to the store (see the module documentation of [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::store::Store;
use super::timeline::{Pushed, Timeline};
use super::windows::WindowSpec;
use crate::record::{AudioChunk, Origin, PartitionProgress, Priority, nanos_to_samples};

/// Sensors moved to the store in one durable batch: their files share the disk's syncs, and what a batch holds in
/// memory while it is written stays small (a quiet sensor holds at most a window's audio).
const PARK_BATCH: usize = 64;

/// A sensor: its timeline (none until its first chunk is placed) and the chunks held back, in `captured_at` order.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct Sensor {
    timeline: Option<Timeline>,
    held: Vec<Held>,
    /// Timely time of the last chunk received (0 for a sensor just loaded from the store).
    #[serde(skip)]
    last_seen: u64,
    /// The chunks loaded from the store that are still pending or held: their audio is on disk, so they hold back
    /// no commit, and the file is kept until they are used up.
    #[serde(skip)]
    stored: HashSet<Origin>,
    /// The priority of its last chunk, which a tail cut by [`Segmenter::flush_tails`] keeps (`normal` for a sensor
    /// loaded from the store).
    #[serde(skip)]
    priority: Priority,
}

/// A chunk waiting for the gap before it to be filled.
#[derive(Serialize, Deserialize)]
struct Held {
    /// Its timely time (the operator holds a capability at the oldest).
    arrived: u64,
    chunk: AudioChunk,
}

impl Held {
    /// The order chunks are placed in: by `captured_at`, then by where they were read.
    fn order(&self) -> (i64, i32, i64) {
        (self.chunk.captured_at, self.chunk.origin.partition, self.chunk.origin.offset)
    }

    /// Memory its samples take.
    fn bytes(&self) -> usize {
        self.chunk.samples.len() * std::mem::size_of::<f32>()
    }

    /// What it costs against the read-ahead: its samples, and the copies of them at the model's rate it turns into
    /// once placed — as the source reckons a message (`wav::memory_cost`), so that what is held back can always be
    /// placed before it fills the read-ahead.
    fn cost(&self, spec: &WindowSpec) -> usize {
        let at_model_rate =
            self.chunk.samples.len() as u64 * u64::from(spec.sample_rate) / u64::from(self.chunk.sample_rate.max(1));
        self.bytes() + spec.copies() * at_model_rate as usize * std::mem::size_of::<f32>()
    }
}

impl Sensor {
    /// Memory it holds: its timeline, the chunks it holds back, and its entry in the segmenter.
    fn bytes(&self, key: &(String, String)) -> usize {
        let timeline = self.timeline.as_ref().map_or(0, Timeline::bytes);
        let entry = std::mem::size_of::<((String, String), Sensor)>() + key.0.len() + key.1.len();
        let held = self.held.iter().map(|h| std::mem::size_of::<Held>() + h.bytes()).sum::<usize>();
        entry + timeline + held
    }

    /// What the chunks held back cost against the read-ahead (see [`Held::cost`]).
    fn held_cost(&self, spec: &WindowSpec) -> usize {
        self.held.iter().map(|h| h.cost(spec)).sum()
    }

    /// When its oldest chunk held back was sent.
    fn held_since(&self) -> Option<i64> {
        self.held.iter().map(|h| h.chunk.sent_ms).min()
    }

    fn placeable(&self, spec: &WindowSpec, chunk: &AudioChunk) -> bool {
        match &self.timeline {
            _ if spec.lateness_ms == 0 => true,
            None => false,
            Some(timeline) => !timeline.leaves_gap(spec, chunk),
        }
    }

    /// Takes a chunk of timely time `time`, looked at when the input frontier is `now`: placed at once when it
    /// continues the audio received (or cannot fill a gap anyway), otherwise held back in order.
    fn receive(&mut self, spec: &WindowSpec, chunk: AudioChunk, time: u64, now: u64, out: &mut Pushed) {
        self.last_seen = self.last_seen.max(now);
        self.priority = chunk.priority;
        if self.held.is_empty() && self.placeable(spec, &chunk) {
            self.place(spec, chunk, out);
            return;
        }
        let held = Held { arrived: time, chunk };
        let at = self.held.partition_point(|h| h.order() <= held.order());
        self.held.insert(at, held);
        self.place_placeable(spec, out);
    }

    /// Places the held chunks that `due` says no earlier audio can come for any more — and every chunk before them
    /// — then whatever has become placeable; `None` places every held chunk.
    fn release(&mut self, spec: &WindowSpec, due: Option<&dyn Fn(i64) -> bool>, out: &mut Pushed) {
        let due = match due {
            None => self.held.len().checked_sub(1),
            Some(due) => self.held.iter().rposition(|h| due(h.chunk.sent_ms)),
        };
        if let Some(last) = due {
            for held in self.held.drain(..=last).collect::<Vec<_>>() {
                self.place(spec, held.chunk, out);
            }
        }
        self.place_placeable(spec, out);
    }

    fn place_placeable(&mut self, spec: &WindowSpec, out: &mut Pushed) {
        while self.held.first().is_some_and(|h| self.placeable(spec, &h.chunk)) {
            let held = self.held.remove(0);
            self.place(spec, held.chunk, out);
        }
    }

    /// Places a chunk on the timeline; a clock that jumped back ends the timeline and starts another.
    fn place(&mut self, spec: &WindowSpec, chunk: AudioChunk, out: &mut Pushed) {
        let (space, sensor, priority) = (chunk.space.clone(), chunk.sensor.clone(), chunk.priority);
        let from = out.windows.len();
        let start =
            |chunk: &AudioChunk| Timeline::starting_at(spec, nanos_to_samples(chunk.captured_at, spec.sample_rate));
        let timeline = self.timeline.get_or_insert_with(|| start(&chunk));
        if let Err(chunk) = timeline.push(spec, chunk, out) {
            tracing::warn!(
                space,
                sensor,
                behind_seconds = (timeline.write_pos() - nanos_to_samples(chunk.captured_at, spec.sample_rate)) as f64
                    / f64::from(spec.sample_rate),
                "A sensor's clock jumped back by more than windows.max_jump_back_seconds: its timeline starts again."
            );
            timeline.close(spec, out);
            let mut fresh = start(&chunk);
            // A fresh timeline ends where the chunk begins: the chunk cannot lie behind it.
            let _ = fresh.push(spec, chunk, out);
            *timeline = fresh;
        }
        name_windows(out, from, &space, &sensor, priority);
    }

    /// Cuts its tail (see [`Timeline::flush_tail`]); the windows go to `out`.
    fn flush_tail(&mut self, spec: &WindowSpec, key: &(String, String), out: &mut Pushed) {
        let from = out.windows.len();
        if let Some(timeline) = self.timeline.as_mut() {
            timeline.flush_tail(spec, out);
        }
        name_windows(out, from, &key.0, &key.1, self.priority);
    }

    /// The chunks still needed: pending on the timeline or held back.
    fn origins(&self) -> impl Iterator<Item = &Origin> {
        let pending = self.timeline.iter().flat_map(|t| t.chunks.iter().map(|c| &c.origin));
        pending.chain(self.held.iter().map(|h| &h.chunk.origin))
    }

    /// Whether the chunks loaded from the store were all used up just now (and forgets them).
    fn stored_used_up(&mut self) -> bool {
        if self.stored.is_empty() || self.origins().any(|o| self.stored.contains(o)) {
            return false;
        }
        self.stored.clear();
        true
    }
}

/// Gives the windows cut from `from` on the sensor they belong to.
fn name_windows(out: &mut Pushed, from: usize, space: &str, sensor: &str, priority: Priority) {
    for window in &mut out.windows[from..] {
        window.key.space = space.to_owned();
        window.key.sensor = sensor.to_owned();
        window.priority = priority;
    }
}

/// Reassembles chunks per sensor and cuts windows; dataflow-agnostic. Times are the timely times (milliseconds of the
/// wall clock at which the chunks were read).
pub struct Segmenter {
    spec: WindowSpec,
    sensors: HashMap<(String, String), Sensor>,
    store: Option<Store>,
    /// Sensors with chunks held back.
    holding: HashSet<(String, String)>,
    /// Sensors whose stored audio was used up, with the time the windows holding it went out: their files are
    /// removed once that time is durable.
    obsolete: Vec<(u64, (String, String))>,
    /// Counts the changes that may move the pending chunks: a report is computed only when it moved.
    revision: u64,
    /// What the chunks held back cost against the read-ahead, and the most they may.
    held_bytes: usize,
    max_held_bytes: usize,
    /// Memory the sensors in memory take (held chunks included), and the most they may before the least recently
    /// heard from move to the store.
    sensor_bytes: usize,
    max_sensor_bytes: usize,
    /// How far each partition of the audio topic has been read, and how many there are.
    partitions: BTreeMap<i32, PartitionProgress>,
    expected_partitions: usize,
    /// The sensors, in memory or in the store, whose tail may still be due a cut (see [`Segmenter::flush_tails`]),
    /// with the time they were last heard from (`None`: before this run, which the first look replaces by its time).
    tails: HashMap<(String, String), Option<u64>>,
    /// Whether every tail is cut when the input ends.
    flush_at_end: bool,
}

impl Segmenter {
    /// A segmenter cutting windows of `spec`, keeping no state on disk.
    pub fn new(spec: WindowSpec) -> Self {
        Segmenter {
            spec,
            sensors: HashMap::new(),
            store: None,
            holding: HashSet::new(),
            obsolete: Vec::new(),
            revision: 0,
            held_bytes: 0,
            max_held_bytes: usize::MAX,
            sensor_bytes: 0,
            max_sensor_bytes: usize::MAX,
            partitions: BTreeMap::new(),
            expected_partitions: 0,
            tails: HashMap::new(),
            flush_at_end: false,
        }
    }

    /// Cuts every sensor's tail when the input ends (see [`Segmenter::flush_tails`]): the audio is finished recordings
    /// (a backfill), so no sensor's last window waits for audio that will not come.
    pub fn with_tails_cut_at_end(mut self, cut: bool) -> Self {
        self.flush_at_end = cut;
        self
    }

    /// Whether tails are cut at all.
    fn cuts_tails(&self) -> bool {
        self.spec.flush_tail_ms > 0 || self.flush_at_end
    }

    /// Waits for reports on `partitions` partitions before any held chunk may be placed (see
    /// [`Segmenter::progress`]); without, only the partitions reported count.
    pub fn with_partitions(mut self, partitions: usize) -> Self {
        self.expected_partitions = partitions;
        self
    }

    /// Takes how far a partition has been read. A held chunk sent at `t` is placed once every partition either has
    /// been read past `t` (a message sent later was read from it: anything sent before lies behind it) or has
    /// nothing left to read and `windows.lateness_ms` have passed since `t` (for chunks still on their way).
    pub fn progress(&mut self, report: PartitionProgress) {
        self.partitions.insert(report.partition, report);
    }

    /// Whether no partition can still hold audio sent before `sent_ms`, at `now` (milliseconds of the job's clock).
    fn no_earlier_audio(&self, sent_ms: i64, now: u64) -> bool {
        self.partitions.len() >= self.expected_partitions
            && self.partitions.values().all(|p| {
                if p.caught_up {
                    now as i64 >= sent_ms.saturating_add(self.spec.lateness_ms as i64)
                } else {
                    p.read_ms.is_some_and(|read| read > sent_ms)
                }
            })
    }

    /// Bounds the memory of the chunks held back: beyond `bytes`, the sensor holding back the longest places its
    /// chunks at once, as if its wait were over (the job gives each worker half its read-ahead budget).
    pub fn with_held_limit(mut self, bytes: usize) -> Self {
        self.max_held_bytes = bytes;
        self
    }

    /// Bounds the memory of the sensors: beyond `bytes`, the sensors heard from least recently (and holding nothing
    /// back) move to the store until a tenth of the limit is free again; their next chunk brings them back, with the
    /// windows and ids they would have had. Without a store, nothing moves.
    pub fn with_sensor_limit(mut self, bytes: usize) -> Self {
        self.max_sensor_bytes = bytes;
        self
    }

    /// Memory the sensors in memory take.
    pub fn sensor_bytes(&self) -> usize {
        self.sensor_bytes
    }

    /// Moves the sensors heard from least recently to the store while the sensors take more than their limit (see
    /// [`Segmenter::with_sensor_limit`]); returns how many moved.
    pub fn fit_sensor_limit(&mut self) -> usize {
        if self.sensor_bytes <= self.max_sensor_bytes || self.store.is_none() {
            return 0;
        }
        let target = self.max_sensor_bytes - self.max_sensor_bytes / 10;
        let mut idle: Vec<(u64, (String, String))> =
            self.sensors.iter().filter(|(_, s)| s.held.is_empty()).map(|(key, s)| (s.last_seen, key.clone())).collect();
        idle.sort_unstable();
        // The least recently heard, until what they take brings the sensors down to the target, go together.
        let mut over = self.sensor_bytes.saturating_sub(target);
        let chosen: Vec<(String, String)> = idle
            .into_iter()
            .map(|(_, key)| key)
            .take_while(|key| {
                let take = over > 0;
                over = over.saturating_sub(self.sensors.get(key).map_or(0, |s| s.bytes(key)));
                take
            })
            .collect();
        self.park_many(&chosen)
    }

    /// Whether it keeps sensor state in a store.
    pub fn stores(&self) -> bool {
        self.store.is_some()
    }

    /// Keeps sensor state in `store`: quiet sensors are moved there ([`Segmenter::park_quiet`]), and sensors found
    /// there continue where they stopped.
    pub fn with_store(mut self, store: Store) -> Self {
        if self.cuts_tails() {
            // What an earlier run stored may hold a tail: it is cut once the sensor has been quiet that long in this
            // run too.
            self.tails.extend(store.sensors().into_iter().map(|key| (key, None)));
        }
        self.store = Some(store);
        self
    }

    /// The sensor `key`, loaded from the store when it is there.
    fn sensor(&mut self, key: &(String, String)) -> &mut Sensor {
        if !self.sensors.contains_key(key) {
            let loaded = match self.store.as_ref().map(|store| store.load::<Sensor>(&key.0, &key.1)) {
                Some(Ok(Some(mut sensor))) => {
                    sensor.stored = sensor.origins().cloned().collect();
                    self.held_bytes += sensor.held_cost(&self.spec);
                    sensor
                }
                Some(Err(error)) => {
                    tracing::error!(space = key.0, sensor = key.1, %error, "A sensor's stored audio cannot be read; it starts afresh.");
                    Sensor::default()
                }
                Some(Ok(None)) | None => Sensor::default(),
            };
            self.sensor_bytes += loaded.bytes(key);
            self.sensors.insert(key.clone(), loaded);
        }
        self.sensors.get_mut(key).expect("inserted above")
    }

    /// Takes one chunk of timely time `time`, looked at when the input frontier is `now` (the job's clock, in
    /// milliseconds); windows and dead letters go to `out`.
    pub fn push(&mut self, chunk: AudioChunk, time: u64, now: u64, out: &mut Pushed) {
        let key = (chunk.space.clone(), chunk.sensor.clone());
        let spec = self.spec.clone();
        let sensor = self.sensor(&key);
        let (before, bytes_before) = (sensor.held_cost(&spec), sensor.bytes(&key));
        sensor.receive(&spec, chunk, time, now, out);
        let (after, bytes_after) = (sensor.held_cost(&spec), sensor.bytes(&key));
        self.held_bytes = self.held_bytes + after - before;
        self.sensor_bytes = self.sensor_bytes + bytes_after - bytes_before;
        self.revision += 1;
        if self.cuts_tails() {
            // Every chunk passes here: the key is cloned only for a sensor not yet tracked.
            match self.tails.get_mut(&key) {
                Some(last) => *last = Some(now),
                None => {
                    self.tails.insert(key.clone(), Some(now));
                }
            }
        }
        self.settle(key, time);
    }

    /// Cuts the tail of every sensor that sent nothing for `windows.flush_tail_seconds` at `now` (of every sensor,
    /// with `None`: the input ended and [`Segmenter::with_tails_cut_at_end`] asked for it) and holds nothing back:
    /// the windows waiting for audio past their end that hold at least `min_coverage` of recorded audio are cut,
    /// padded with silence. A sensor in the store is loaded for it and stored again. Windows go out at `time`;
    /// returns how many sensors had a window cut.
    pub fn flush_tails(&mut self, now: Option<u64>, time: u64, out: &mut Pushed) -> usize {
        let after = self.spec.flush_tail_ms;
        let due: Vec<(String, String)> = match now {
            None if self.flush_at_end => self.tails.keys().cloned().collect(),
            Some(now) if after > 0 => self
                .tails
                .iter_mut()
                .filter_map(|(key, last)| (last.get_or_insert(now).saturating_add(after) <= now).then(|| key.clone()))
                .collect(),
            _ => return 0,
        };
        let mut cut = 0;
        for key in due {
            let in_memory = self.sensors.contains_key(&key);
            let spec = self.spec.clone();
            let sensor = self.sensor(&key);
            if !sensor.held.is_empty() {
                continue;
            }
            let (bytes_before, windows_before) = (sensor.bytes(&key), out.windows.len());
            sensor.flush_tail(&spec, &key, out);
            let bytes_after = sensor.bytes(&key);
            self.sensor_bytes = self.sensor_bytes + bytes_after - bytes_before;
            self.tails.remove(&key);
            self.revision += 1;
            self.settle(key.clone(), time);
            if !in_memory {
                self.park(&key);
            }
            cut += usize::from(out.windows.len() > windows_before);
        }
        cut
    }

    /// Places what the sensors holding back the longest hold, until what is held back fits its limit (see
    /// [`Segmenter::with_held_limit`]); windows go out at `time`.
    pub fn fit_held_limit(&mut self, time: u64, out: &mut Pushed) {
        while self.held_bytes > self.max_held_bytes {
            let Some(longest) = self
                .holding
                .iter()
                .filter_map(|key| Some((self.sensors.get(key)?.held_since()?, key.clone())))
                .min()
                .map(|(_, key)| key)
            else {
                break;
            };
            self.release_sensor(&longest, None, time, out);
        }
    }

    /// Places what sensor `key` holds back and is due at `now` (all of it with `None`); windows go out at `time`.
    fn release_sensor(&mut self, key: &(String, String), now: Option<u64>, time: u64, out: &mut Pushed) {
        let Some(mut sensor) = self.sensors.remove(key) else { return };
        let (before, bytes_before) = (sensor.held_cost(&self.spec), sensor.bytes(key));
        match now {
            Some(now) => sensor.release(&self.spec, Some(&|sent| self.no_earlier_audio(sent, now)), out),
            None => sensor.release(&self.spec, None, out),
        }
        if sensor.held_cost(&self.spec) != before {
            self.held_bytes -= before - sensor.held_cost(&self.spec);
            self.revision += 1;
        }
        self.sensor_bytes = self.sensor_bytes + sensor.bytes(key) - bytes_before;
        self.sensors.insert(key.clone(), sensor);
        self.settle(key.clone(), time);
    }

    /// Places the held chunks for which no earlier audio can come any more at `now` (or all of them, with `None`: the
    /// input ended); windows go out at `time`.
    pub fn release(&mut self, now: Option<u64>, time: u64, out: &mut Pushed) {
        for key in self.holding.iter().cloned().collect::<Vec<_>>() {
            self.release_sensor(&key, now, time, out);
        }
    }

    /// Notes what the last change to sensor `key` did at `time`.
    fn settle(&mut self, key: (String, String), time: u64) {
        let Some(sensor) = self.sensors.get_mut(&key) else { return };
        if sensor.stored_used_up() && self.store.is_some() {
            self.obsolete.push((time, key.clone()));
        }
        if sensor.held.is_empty() {
            self.holding.remove(&key);
        } else {
            self.holding.insert(key);
        }
    }

    /// The timely time of the oldest chunk held back.
    pub fn oldest_held(&self) -> Option<u64> {
        self.holding
            .iter()
            .filter_map(|key| self.sensors.get(key))
            .flat_map(|sensor| sensor.held.iter().map(|h| h.arrived))
            .min()
    }

    /// Moves the sensors that sent nothing since `now - spec.park_after_ms` (and hold nothing back) to the store;
    /// returns how many. Without a store, nothing moves.
    pub fn park_quiet(&mut self, now: u64) -> usize {
        let after = self.spec.park_after_ms;
        let quiet: Vec<(String, String)> = self
            .sensors
            .iter()
            .filter(|(_, s)| s.held.is_empty() && s.last_seen.saturating_add(after) <= now)
            .map(|(key, _)| key.clone())
            .collect();
        self.park_many(&quiet)
    }

    /// Moves every sensor to the store (the input has ended: nothing is held back any more); returns how many moved.
    pub fn park_all(&mut self) -> usize {
        let all: Vec<(String, String)> = self.sensors.keys().cloned().collect();
        self.park_many(&all)
    }

    fn park(&mut self, key: &(String, String)) -> bool {
        self.park_many(std::slice::from_ref(key)) == 1
    }

    /// Moves `keys` to the store, [`PARK_BATCH`] sensors to a durable batch; returns how many moved. A sensor whose
    /// state cannot be stored stays in memory.
    fn park_many(&mut self, keys: &[(String, String)]) -> usize {
        let mut moved = 0;
        for batch in keys.chunks(PARK_BATCH) {
            let Some(store) = self.store.as_mut() else { return moved };
            let mut leaving: Vec<((String, String), Sensor, usize)> = batch
                .iter()
                .filter_map(|key| {
                    let mut sensor = self.sensors.remove(key)?;
                    let bytes = sensor.bytes(key);
                    if let Some(timeline) = sensor.timeline.as_mut() {
                        timeline.flush_resampler();
                    }
                    Some((key.clone(), sensor, bytes))
                })
                .collect();
            let states: Vec<(&str, &str, &Sensor)> =
                leaving.iter().map(|(key, sensor, _)| (key.0.as_str(), key.1.as_str(), sensor)).collect();
            let saved = store.save_many(&states);
            for ((key, sensor, bytes), saved) in leaving.drain(..).zip(saved) {
                match saved {
                    Ok(()) => {
                        self.obsolete.retain(|(_, k)| *k != key);
                        self.holding.remove(&key);
                        self.held_bytes -= sensor.held_cost(&self.spec);
                        self.sensor_bytes -= bytes;
                        self.revision += 1;
                        moved += 1;
                    }
                    Err(error) => {
                        tracing::error!(space = key.0, sensor = key.1, %error, "A sensor's audio cannot be stored; it stays in memory and its chunks uncommitted.");
                        self.sensor_bytes = self.sensor_bytes + sensor.bytes(&key) - bytes;
                        self.sensors.insert(key, sensor);
                    }
                }
            }
        }
        moved
    }

    /// Removes the files of sensors whose stored audio was used up at a time that `unsettled` says is durable now.
    pub fn remove_obsolete(&mut self, unsettled: impl Fn(&u64) -> bool) {
        let Some(store) = self.store.as_mut() else { return };
        let (settled, unsettled): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.obsolete).into_iter().partition(|(time, _)| !unsettled(time));
        self.obsolete = unsettled;
        let keys: Vec<(&str, &str)> = settled.iter().map(|(_, key)| (key.0.as_str(), key.1.as_str())).collect();
        for ((space, sensor), removed) in keys.iter().zip(store.remove_many(&keys)) {
            if let Err(error) = removed {
                tracing::warn!(space, sensor, %error, "A used-up sensor file cannot be removed.");
            }
        }
    }

    /// The oldest chunk still needed per partition of the audio topic: where a restart must resume to lose nothing.
    /// Chunks whose audio the store holds are left out.
    pub fn pending_offsets(&self) -> BTreeMap<i32, i64> {
        let mut oldest = BTreeMap::new();
        for sensor in self.sensors.values() {
            for origin in sensor.origins().filter(|o| !sensor.stored.contains(o)) {
                let offset = oldest.entry(origin.partition).or_insert(origin.offset);
                *offset = (*offset).min(origin.offset);
            }
        }
        oldest
    }

    /// Changes so far that may have moved [`Segmenter::pending_offsets`]: equal revisions, equal offsets.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Chunks held, pending on a timeline or held back (those the store holds included).
    pub fn pending_chunks(&self) -> usize {
        self.sensors.values().map(|s| s.origins().count()).sum()
    }

    /// Sensors in memory.
    pub fn active(&self) -> usize {
        self.sensors.len()
    }

    /// Sensors with a file in the store.
    pub fn stored(&self) -> usize {
        self.store.as_ref().map_or(0, Store::len)
    }

    /// Stores a sensor's timeline as a savepoint of an earlier release held it (see [`super::Savepoint`]).
    pub(super) fn store_timeline(
        store: &mut Store,
        space: &str,
        sensor: &str,
        timeline: Timeline,
    ) -> std::io::Result<()> {
        let sensor_state = Sensor { timeline: Some(timeline), ..Sensor::default() };
        store.save(space, sensor, &sensor_state)
    }

    #[cfg(test)]
    pub(super) fn write_pos(&self, space: &str, sensor: &str) -> Option<i64> {
        let key = (space.to_owned(), sensor.to_owned());
        self.sensors.get(&key)?.timeline.as_ref().map(Timeline::write_pos)
    }
}
