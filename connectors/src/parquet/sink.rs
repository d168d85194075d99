//! The archive sink operator: writes a stream of segments with an [`ArchiveWriter`] and reports, through its output's
//! frontier, what has been written and synced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chorus_operators::metrics::Metrics;
use chorus_operators::record::Segment;
use chorus_operators::wakeup::Wakeup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::ArchiveWriter;
use crate::Fatal;

/// Writes the segments of a stream to the archive. The returned stream carries no data: its frontier is what has
/// been written and synced, for the probe that gates offset commits. `metrics` counts the rows written, times the
/// writes (stage `archive`) and follows the rows waiting (queue `archive`).
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use chorus_connectors::Fatal;
/// use chorus_connectors::parquet::{self, ArchiveConfig, ArchiveWriter};
/// use chorus_operators::metrics::Metrics;
/// use chorus_operators::record::{Origin, Segment, SegmentId, SegmentKey};
/// use timely::dataflow::operators::{Input, Probe};
///
/// let dir = tempfile::tempdir().unwrap();
/// let root = dir.path().to_path_buf();
/// // Rows wait at most a millisecond for their file.
/// let config = ArchiveConfig { dir: root.clone(), flush_interval_seconds: 0.001, ..Default::default() };
/// let writer = ArchiveWriter::new(config.build(Path::new("/")).unwrap(), "standin", 4, "w0");
/// // A 5 s window at 32 kHz from 2026-05-01T00:00:00Z, with its 4-dimensional embedding.
/// let start = 1_777_593_600 * 32_000;
/// let segment = Segment {
///     key: SegmentKey { space: "default".into(), sensor: "s1".into(), start, sample_rate: 32_000, len: 160_000 },
///     coverage: 1.0,
///     origin: Origin { topic: "audio".into(), partition: 0, offset: 7 },
///     resumed: false,
///     embedding: vec![0.5, -0.5, 0.25, 0.0],
///     audio: Vec::new(),
/// };
/// let fatal = Fatal::default();
/// let failure = fatal.clone();
/// timely::execute_directly(move |worker| {
///     let (mut input, durable) = worker.dataflow(|scope| {
///         let (input, segments) = scope.new_input::<Vec<Segment>>();
///         let (durable, _) = parquet::sink(segments, writer, fatal, Metrics::unregistered()).probe();
///         (input, durable)
///     });
///     input.send(segment);
///     input.advance_to(1);
///     // The sink's frontier passes time 0 only once what was sent at 0 is in a synced file.
///     assert!(parquet::files(&root, "default").unwrap().is_empty());
///     while durable.less_than(&1) {
///         worker.step();
///     }
///     assert_eq!(parquet::files(&root, "default").unwrap().len(), 1);
/// });
/// assert_eq!(failure.get(), None);
/// let mut rows = Vec::new();
/// parquet::read_space(dir.path(), "default", false, |row| rows.push(row)).unwrap();
/// assert_eq!(rows.len(), 1);
/// assert_eq!((rows[0].id, rows[0].origin.offset), (SegmentId::of("default", "s1", start), 7));
/// ```
pub fn sink<'scope>(
    stream: StreamVec<'scope, u64, Segment>,
    mut writer: ArchiveWriter,
    fatal: Fatal,
    metrics: Metrics,
) -> StreamVec<'scope, u64, ()> {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new("Archive".to_owned(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(stream, Pipeline);
    let (written_out, written) = builder.new_output::<Vec<()>>();
    let _written_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(written_out);
    let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
    let interval = writer.settings.flush_interval;
    builder.build(move |_initial| {
        let mut unwritten: HashMap<u64, Capability<u64>> = HashMap::new();
        move |frontiers| {
            input.for_each(|capability, segments| {
                let time = *capability.least().expect("segments travel with a time");
                metrics.queued("archive", segments.len() as i64);
                for segment in segments.drain(..) {
                    writer.add(segment);
                }
                unwritten.entry(time).or_insert_with(|| capability.delayed(&time, 0));
            });
            if unwritten.is_empty() {
                return;
            }
            if frontiers[0].is_empty() || writer.due() {
                let rows = writer.buffered();
                let started = Instant::now();
                match writer.flush() {
                    Ok(_) => {
                        unwritten.clear();
                        metrics.time("archive", started);
                        metrics.count("archive", rows, rows);
                        metrics.queued("archive", -(rows as i64));
                    }
                    Err(error) => fatal.raise(error.to_string()),
                }
            }
            if !unwritten.is_empty() {
                wakeup.within(interval.min(Duration::from_secs(1)));
            }
        }
    });
    written
}
