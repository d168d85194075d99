//! Segmenting: per-sensor reassembly of audio chunks into a timeline at the model's rate, cut into windows.
//!
//! Each `(space, sensor)` has a timeline on the model's absolute sample clock (samples since the Unix epoch).
//! Chunks that follow each other within `gap_tolerance` extend one *run*; a larger jump in `captured_at`, or a change
//! of sample rate, starts a new run. Runs at another rate pass through a streaming resampler. Windows lie on a fixed
//! grid — multiples of the hop on that clock — so the same audio always yields the same windows and segment ids,
//! however it was chunked and wherever a replay starts. A window is cut once audio past its end has arrived; silence
//! in a gap is zeros, and windows with less than `min_coverage` of recorded audio are skipped.
//!
//! Contiguity is judged on the sample clock: a chunk continues its run when its `captured_at` is within the tolerance
//! (at most half the chunk's length) of the run's start time plus the samples received since. A chunk lying wholly
//! within audio already received is a repeated delivery and is dropped; one that starts inside it keeps only its new
//! part; one that lies wholly before it is out of order — unless it lies more than `max_jump_back` before it: then
//! the sensor's clock jumped back, and its timeline starts again. Overlaps and out-of-order chunks leave dead
//! letters.
//!
//! **Order.** A sensor's chunks may travel on several partitions (producers with different partitioners, a topic
//! that grew), so they can arrive out of `captured_at` order, however fast each partition is read. A chunk that
//! continues the audio received is placed at once; one that would start after a gap (and a sensor's first chunk) is
//! held back, in `captured_at` order, until the gap is filled or no partition can still hold audio sent before it:
//! every partition has been read past the chunk's Kafka timestamp (a partition is read in the order it was written),
//! or has nothing left to read and `lateness_ms` have passed since the chunk was sent (for chunks still on their
//! way). The source workers say how far they have read each partition ([`PartitionProgress`]), and that applies after
//! the chunks read before it. Sooner than that, a worker places what it holds back once it reaches its share of the
//! memory budget ([`Segmenter::with_held_limit`]). The same audio therefore yields the same windows whatever
//! partitions it came from and however fast each is read, within those bounds. What is held is bounded by that
//! share alone: the operator holds no capability for it, so the embedding stage's progress — which the source's
//! read-ahead follows — never waits for a held chunk, and the source keeps reading the partitions whose progress
//! ends the wait. Commits wait for held chunks, which are pending (below).
//!
//! **Pending chunks and commits.** Every chunk whose samples a future window may still need stays *pending* (held
//! chunks too). The timely operator processes chunks in time order, sends each window at the time of the processing
//! that cut it, and reports, at that same time and whenever it changes, the offset of the oldest pending chunk per
//! partition: a commit past a chunk waits for the windows that used it.
//! Offsets are committed up to those reports and no further, so a restart re-reads every chunk a window not yet cut
//! still needs.
//!
//! **Tails.** A sensor that sent nothing for `flush_tail` has its tail cut: the windows still waiting for audio past
//! their end that hold at least `min_coverage` of recorded audio are cut, padded with silence — the same windows a
//! gap after the audio would give. Audio that continues the sensor later goes on into the windows after them (a
//! window cut this way stands). With [`Segmenter::with_tails_cut_at_end`], every tail is cut when the input ends.
//!
//! **The store.** A sensor that sent nothing for `park_after` is moved to the [`Store`], a file per sensor: its
//! chunks no longer pin their partition, and a decommissioned sensor costs neither memory nor commits. When the
//! input ends (a clean stop) every sensor is moved there. A sensor's next chunk loads it back; the chunks its file
//! holds are not pending (their audio is on disk), and once the windows holding them are durable the file is removed.
//! A job that dies leaves the files as they were, and the next one continues from them.

mod savepoint;
mod sensors;
mod store;
mod timeline;
mod windows;

use std::collections::BTreeMap;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{ProbeHandle, StreamVec};

pub use savepoint::Savepoint;
pub use sensors::Segmenter;
pub use store::Store;
pub use timeline::Pushed;
pub use windows::{WindowSpec, WindowsConfig, clip_window_starts, clip_windows};

use crate::metrics::Metrics;
use crate::record::{AudioChunk, DeadLetter, PartitionProgress, PendingReport, Window, route};

/// Cuts a stream of audio chunks into model windows; see the module documentation.
pub trait Segment<'scope> {
    /// Returns the windows, the dead letters of audio that could not be placed, and the pending reports of every
    /// worker (broadcast: each worker receives them all). `progress` says how far the partitions have been read, as
    /// every source worker reports it (broadcast to every worker): held-back chunks wait for it.
    ///
    /// # Examples
    /// ```
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{AudioChunk, Origin, PartitionProgress, Priority};
    /// use chorus_operators::segment::{Segment, Segmenter, WindowsConfig};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    /// use timely::dataflow::operators::Capture;
    ///
    /// let spec = WindowsConfig { hop_seconds: 1.0, ..Default::default() }.build(1_000, 2_000).unwrap();
    /// let (starts, pending) = timely::example(move |scope| {
    ///     let chunk = AudioChunk {
    ///         space: "default".into(), sensor: "s1".into(), captured_at: 0, sent_ms: 0, priority: Priority::Normal,
    ///         sample_rate: 1_000, samples: vec![0.1; 5_000],
    ///         origin: Origin { topic: "audio".into(), partition: 3, offset: 7 },
    ///     };
    ///     let progress = Vec::<PartitionProgress>::new().to_stream(scope);
    ///     let (windows, _dead_letters, reports) = vec![chunk].to_stream(scope).segment(
    ///         progress,
    ///         Segmenter::new(spec).with_partitions(1),
    ///         None,
    ///         Metrics::unregistered(),
    ///     );
    ///     (windows.map(|w| w.key.start).capture(), reports.map(|r| r.pending).capture())
    /// });
    /// let starts: Vec<i64> = starts.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// // A sensor's first chunk waits until no partition can hold audio sent before it — here, until the input ends,
    /// // since no partition reports. Then the windows it completes are cut; the window at 4 s waits for audio
    /// // past 6 s...
    /// assert_eq!(starts, vec![0, 1_000, 2_000, 3_000]);
    /// // ... so the chunk holding it stays pending: offset 7 of partition 3 must not be committed yet (without a
    /// // store, the input's end does not change that).
    /// assert_eq!(pending.extract(), vec![(0, vec![vec![(3, 7)]])]);
    /// ```
    ///
    /// Two chunks of one sensor, the second continuing the first: with `lateness_ms = 0` each is placed as it
    /// arrives, and the windows run across the boundary between them (the second chunk's samples are 0.2). Each
    /// window has the model's length, the origin of its first sample, and an id that follows from its space, sensor
    /// and first sample alone; the window at 4 s waits for more audio, as above.
    /// ```
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{AudioChunk, Origin, PartitionProgress, Priority, SegmentId, Window};
    /// use chorus_operators::segment::{Segment, Segmenter, WindowsConfig};
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    ///
    /// let spec = WindowsConfig { hop_seconds: 1.0, lateness_ms: 0, ..Default::default() };
    /// let spec = spec.build(1_000, 2_000).unwrap();
    /// let chunk = |offset: i64, samples: Vec<f32>| AudioChunk {
    ///     space: "default".into(),
    ///     sensor: "s1".into(),
    ///     captured_at: offset * 2_500_000_000,
    ///     sent_ms: offset * 2_500,
    ///     priority: Priority::Normal,
    ///     sample_rate: 1_000,
    ///     samples,
    ///     origin: Origin { topic: "audio".into(), partition: 0, offset },
    /// };
    /// let chunks = vec![chunk(0, vec![0.1; 2_500]), chunk(1, vec![0.2; 2_500])];
    /// let windows = timely::example(move |scope| {
    ///     let progress = Vec::<PartitionProgress>::new().to_stream(scope);
    ///     let (windows, _dead_letters, _reports) =
    ///         chunks.to_stream(scope).segment(progress, Segmenter::new(spec), None, Metrics::unregistered());
    ///     let second = |w: &Window| w.samples.iter().filter(|s| **s == 0.2).count();
    ///     windows.map(move |w| (w.key.start, w.key.id(), w.samples.len(), w.origin.offset, second(&w))).capture()
    /// });
    /// let windows: Vec<_> = windows.extract().into_iter().flat_map(|(_, w)| w).collect();
    /// let id = |start: i64| SegmentId::of("default", "s1", start);
    /// assert_eq!(
    ///     windows,
    ///     [
    ///         (0, id(0), 2_000, 0, 0),
    ///         (1_000, id(1_000), 2_000, 0, 500),
    ///         (2_000, id(2_000), 2_000, 0, 1_500),
    ///         (3_000, id(3_000), 2_000, 1, 2_000),
    ///     ]
    /// );
    /// ```
    ///
    /// With a store ([`Segmenter::with_store`]), quiet sensors move there and every sensor does when the input ends
    /// (see the module documentation); a sensor file whose audio is used up is removed once `durable` (the probe over
    /// the sinks) has passed the time its windows went out.
    fn segment(
        self,
        progress: StreamVec<'scope, u64, PartitionProgress>,
        segmenter: Segmenter,
        durable: Option<ProbeHandle<u64>>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>);
}

/// What arrived at one time: chunks (with capabilities for the outputs) and partition progress.
#[derive(Default)]
struct Arrived {
    capabilities: Option<[Capability<u64>; 3]>,
    chunks: Vec<AudioChunk>,
    progress: Vec<PartitionProgress>,
}

impl<'scope> Segment<'scope> for StreamVec<'scope, u64, AudioChunk> {
    fn segment(
        self,
        progress: StreamVec<'scope, u64, PartitionProgress>,
        mut segmenter: Segmenter,
        durable: Option<ProbeHandle<u64>>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>)
    {
        let scope = self.scope();
        let worker = scope.index();
        let mut builder = OperatorBuilder::new("Segment".to_owned(), scope);
        let mut input = builder.new_input(self, ExchangePact::new(|c: &AudioChunk| route(&c.space) ^ route(&c.sensor)));
        let mut progress_input = builder.new_input(progress, Pipeline);
        let (windows_out, windows) = builder.new_output::<Vec<Window>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (reports_out, reports) = builder.new_output::<Vec<PendingReport>>();
        let mut windows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Window>>>::from(windows_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut reports_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PendingReport>>>::from(reports_out);

        builder.build(move |initial| {
            // One capability per output following the input frontier: windows placed when a held chunk's wait is over
            // go out at the frontier, as does the last report once the input has ended.
            let mut following: Option<Vec<Capability<u64>>> = Some(initial);
            // The latest time processed: what the input's end releases goes out no earlier.
            let mut latest = 0u64;
            let stores = segmenter.stores();
            // What arrived waits here until nothing earlier can arrive: each sensor's audio is placed in time order, a
            // window goes out at the time of the chunk that completed it (never before a chunk it holds), and the
            // partitions' progress applies after the chunks read before it.
            let mut stash: BTreeMap<u64, Arrived> = BTreeMap::new();
            let mut reported = BTreeMap::new();
            let mut revision = 0;
            let mut last_look = 0u64;
            let mut counted = (0i64, 0i64);
            let mut sensor_bytes = 0i64;
            move |frontiers| {
                input.for_each(|capability, chunks| {
                    let time = *capability.least().expect("chunks travel with a time");
                    let arrived = stash.entry(time).or_default();
                    arrived.capabilities.get_or_insert_with(|| [0, 1, 2].map(|port| capability.delayed(&time, port)));
                    arrived.chunks.append(chunks);
                });
                progress_input.for_each(|capability, reports| {
                    let time = *capability.least().expect("progress travels with a time");
                    stash.entry(time).or_default().progress.append(reports);
                });
                let mut windows_session = windows_out.activate();
                let mut dead_session = dead_out.activate();
                let mut reports_session = reports_out.activate();
                // Windows and dead letters go out at the time of the processing that made them, as does the report
                // of the chunks it released: a commit past a chunk waits for the windows that used it.
                let mut send = |pushed: Pushed, caps: &[Capability<u64>]| {
                    for space in &pushed.duplicates {
                        metrics.duplicate_chunks.with_label_values(&[space.as_str()]).inc();
                    }
                    for letter in &pushed.rejected {
                        metrics.reject("segment", letter.cause, 1);
                    }
                    windows_session.session(&caps[0]).give_iterator(pushed.windows.into_iter());
                    dead_session.session(&caps[1]).give_iterator(pushed.rejected.into_iter());
                };
                // The pending offsets are a walk over every sensor: taken again only after a change that may move them.
                let mut report = |segmenter: &Segmenter, cap: &Capability<u64>| {
                    if segmenter.revision() == revision {
                        return;
                    }
                    revision = segmenter.revision();
                    let pending = segmenter.pending_offsets();
                    if pending != reported {
                        let report = PendingReport { worker, pending: pending.iter().map(|(p, o)| (*p, *o)).collect() };
                        reports_session.session(cap).give(report);
                        reported = pending;
                    }
                };
                // The earliest time either input may still bring.
                let frontier =
                    [&frontiers[0], &frontiers[1]].iter().filter_map(|f| f.frontier().first().copied()).min();
                while let Some(entry) = stash.first_entry() {
                    if frontier.is_some_and(|f| *entry.key() >= f) {
                        break;
                    }
                    let time = *entry.key();
                    latest = latest.max(time);
                    let arrived = entry.remove();
                    let now = frontier.unwrap_or(time);
                    let started = Instant::now();
                    let received = arrived.chunks.len();
                    let mut pushed = Pushed::default();
                    for chunk in arrived.chunks {
                        segmenter.push(chunk, time, now, &mut pushed);
                    }
                    // What was read with these chunks may end some waits; only then does the memory limit apply.
                    for progress in arrived.progress {
                        segmenter.progress(progress);
                    }
                    segmenter.release(Some(now), time, &mut pushed);
                    segmenter.fit_held_limit(time, &mut pushed);
                    segmenter.fit_sensor_limit();
                    metrics.count("segment", received, pushed.windows.len());
                    metrics.time("segment", started);
                    // Progress alone brings no capability: the ones following the frontier give this time, so that
                    // the report of what it released goes out no earlier than the windows that used it.
                    let capabilities = arrived.capabilities.unwrap_or_else(|| {
                        let following = following.as_ref().expect("held until the input ends");
                        [0, 1, 2].map(|port| following[port].delayed(&time))
                    });
                    let caps = &capabilities[..];
                    send(pushed, caps);
                    report(&segmenter, &caps[2]);
                }
                match frontier {
                    Some(now) => {
                        let caps = following.as_mut().expect("held until the input ends");
                        for cap in caps.iter_mut() {
                            if *cap.time() < now {
                                cap.downgrade(&now);
                            }
                        }
                        let mut pushed = Pushed::default();
                        segmenter.release(Some(now), now, &mut pushed);
                        // Once a second: the tails of sensors quiet for `flush_tail_seconds` are cut, then the sensors
                        // quiet for `park_after_seconds` move to the store.
                        let look = now >= last_look.saturating_add(1_000);
                        if look {
                            last_look = now;
                            segmenter.flush_tails(Some(now), now, &mut pushed);
                        }
                        metrics.count("segment", 0, pushed.windows.len());
                        send(pushed, caps);
                        if stores && look {
                            segmenter.park_quiet(now);
                            if let Some(durable) = &durable {
                                segmenter.remove_obsolete(|t| durable.less_equal(t));
                            }
                        }
                        report(&segmenter, &caps[2]);
                    }
                    None => {
                        if let Some(following) = following.take() {
                            // The chunks still held may have arrived after the frontier last moved: what they complete
                            // and the report that releases them go out no earlier than they arrived.
                            let caps: Vec<Capability<u64>> =
                                following.iter().map(|cap| cap.delayed(&latest.max(*cap.time()))).collect();
                            let mut pushed = Pushed::default();
                            segmenter.release(None, *caps[0].time(), &mut pushed);
                            segmenter.flush_tails(None, *caps[0].time(), &mut pushed);
                            metrics.count("segment", 0, pushed.windows.len());
                            send(pushed, &caps);
                            if stores {
                                let parked = segmenter.park_all();
                                tracing::info!(worker, sensors = parked, "Sensors' unfinished audio stored.");
                            }
                            report(&segmenter, &caps[2]);
                        }
                    }
                }
                metrics.memory.with_label_values(&["sensors"]).add(segmenter.sensor_bytes() as i64 - sensor_bytes);
                sensor_bytes = segmenter.sensor_bytes() as i64;
                let now_counted = (segmenter.active() as i64, segmenter.stored() as i64);
                metrics.sensors.with_label_values(&["active"]).add(now_counted.0 - counted.0);
                metrics.sensors.with_label_values(&["stored"]).add(now_counted.1 - counted.1);
                counted = now_counted;
            }
        });
        (windows, dead, reports.broadcast())
    }
}

#[cfg(test)]
mod tests;
