//! Segmenting as a whole: the segmenter over its timelines, held chunks and store, fed chunk by chunk as the operator
//! feeds it.

use super::*;
use crate::record::{Origin, Priority, samples_to_nanos};

const RATE: u32 = 1_000;

fn config(hop: f64) -> WindowsConfig {
    WindowsConfig {
        hop_seconds: hop,
        gap_tolerance_ms: 5,
        min_coverage_seconds: 0.5,
        lateness_ms: 0,
        ..Default::default()
    }
}

/// Places every chunk as it arrives.
fn spec(hop: f64, window: u32) -> WindowSpec {
    config(hop).build(RATE, window).unwrap()
}

/// What one chunk arriving at time 0 produces.
fn push(segmenter: &mut Segmenter, chunk: AudioChunk) -> Pushed {
    let mut out = Pushed::default();
    segmenter.push(chunk, 0, 0, &mut out);
    out
}

fn chunk(sensor: &str, at_sample: i64, samples: Vec<f32>, rate: u32, offset: i64) -> AudioChunk {
    AudioChunk {
        space: "default".into(),
        sensor: sensor.into(),
        captured_at: samples_to_nanos(at_sample, rate),
        sent_ms: samples_to_nanos(at_sample, rate) / 1_000_000,
        priority: Priority::Normal,
        sample_rate: rate,
        samples,
        origin: Origin { topic: "audio".into(), partition: 0, offset },
    }
}

fn starts(pushed: &Pushed) -> Vec<i64> {
    pushed.windows.iter().map(|w| w.key.start).collect()
}

/// Feeds `signal` (one value per sample, at RATE) in chunks of `sizes` (cycled) and returns the windows.
fn segment_in_chunks(spec: &WindowSpec, signal: &[f32], start: i64, sizes: &[usize]) -> Vec<Window> {
    let mut segmenter = Segmenter::new(spec.clone());
    let (mut at, mut offset, mut windows) = (0usize, 0i64, Vec::new());
    for &size in sizes.iter().cycle() {
        if at >= signal.len() {
            break;
        }
        let end = (at + size).min(signal.len());
        let pushed = push(&mut segmenter, chunk("s", start + at as i64, signal[at..end].to_vec(), RATE, offset));
        assert!(pushed.rejected.is_empty() && pushed.duplicates.is_empty());
        windows.extend(pushed.windows);
        at = end;
        offset += 1;
    }
    windows
}

#[test]
fn clips_are_cut_from_their_first_sample_and_padded_at_the_end() {
    let spec = spec(1.0, 2_000);
    let starts = |n: usize| clip_windows(&spec, &vec![1.0; n]).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(starts(700), vec![0]);
    assert_eq!(starts(2_000), vec![0]);
    assert_eq!(starts(3_400), vec![0, 1_000, 2_000]);
    assert_eq!(starts(3_000), vec![0, 1_000]);
    let last = clip_windows(&spec, &vec![1.0; 3_600]).pop().unwrap().1;
    assert_eq!((last[1_599], last[1_600]), (1.0, 0.0));
}

#[test]
fn windows_do_not_depend_on_chunk_boundaries() {
    let spec = spec(0.5, 2_000);
    let signal: Vec<f32> = (0..10_300).map(|i| (i as f32 * 0.01).sin()).collect();
    let whole = segment_in_chunks(&spec, &signal, 40_000, &[signal.len()]);
    let chunked = segment_in_chunks(&spec, &signal, 40_000, &[1_300, 777, 2_001]);
    let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
    assert!(whole.iter().map(content).eq(chunked.iter().map(content)), "windows differ");
    let starts: Vec<i64> = whole.iter().map(|w| w.key.start - 40_000).collect();
    assert_eq!(starts, (0..=16).map(|k| k * 500).collect::<Vec<_>>());
    assert_eq!(whole[3].samples[..], signal[1_500..3_500]);
    assert!(whole.iter().all(|w| w.coverage == 1.0));
}

#[test]
fn windows_sit_on_the_absolute_grid() {
    let spec = spec(1.0, 2_000);
    let windows = segment_in_chunks(&spec, &vec![0.5; 6_000], 10_250, &[1_000]);
    // The first window starts at the grid point before the first sample and is zero-padded at its head.
    assert_eq!(windows[0].key.start, 10_000);
    assert_eq!(windows[0].samples[..250], vec![0.0; 250][..]);
    assert_eq!(windows[0].coverage, 0.875);
    assert!(windows.iter().all(|w| w.key.start % 1_000 == 0));
}

#[test]
fn a_gap_starts_a_new_run_and_skips_silent_windows() {
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    let mut cut = Vec::new();
    for (at, n, offset) in [(0, 3_000, 0), (23_000, 3_000, 1), (26_000, 1_000, 2)] {
        let pushed = push(&mut segmenter, chunk("s", at, vec![1.0; n], RATE, offset));
        cut.extend(pushed.windows.iter().map(|w| (w.key.start, w.coverage)));
    }
    // The window [2000, 4000) holds the first run's tail and is cut as soon as the gap is known.
    assert_eq!(cut, vec![(0, 1.0), (1_000, 1.0), (2_000, 0.5), (23_000, 1.0), (24_000, 1.0), (25_000, 1.0)]);
}

#[test]
fn overlapping_audio_keeps_its_new_part_and_leaves_a_dead_letter() {
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    push(&mut segmenter, chunk("s", 0, vec![1.0; 3_000], RATE, 0));
    let pushed = push(&mut segmenter, chunk("s", 2_000, vec![2.0; 2_000], RATE, 1));
    let letter = &pushed.rejected[0];
    assert_eq!(letter.cause, "overlap");
    assert!(letter.reason.contains("1.000 s"), "{}", letter.reason);
    // The kept second half continues the timeline at 3000.
    let pushed = push(&mut segmenter, chunk("s", 4_000, vec![3.0; 1_000], RATE, 2));
    let w = pushed.windows.last().unwrap();
    assert_eq!(w.key.start, 3_000);
    assert_eq!(w.samples[..1_000], vec![2.0; 1_000][..]);
}

#[test]
fn a_repeated_chunk_is_dropped_without_breaking_the_run() {
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 0));
    let again = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 1));
    assert!(again.duplicates == ["default"] && again.rejected.is_empty() && again.windows.is_empty());
    let next = push(&mut segmenter, chunk("s", 1_500, vec![1.0; 1_500], RATE, 2));
    assert!(next.duplicates.is_empty());
    assert_eq!(starts(&next), vec![0, 1_000]);
    // A repeated chunk shorter than the tolerance is still a repeat, not a successor.
    let short = push(&mut segmenter, chunk("s", 2_997, vec![1.0; 3], RATE, 3));
    assert_eq!(short.duplicates, ["default"]);
}

#[test]
fn a_first_chunk_shorter_than_the_tolerance_is_kept() {
    let spec =
        WindowsConfig { gap_tolerance_ms: 100, min_coverage_seconds: 0.001, ..config(1.0) }.build(RATE, 2_000).unwrap();
    let mut segmenter = Segmenter::new(spec);
    let first = push(&mut segmenter, chunk("s", 0, vec![1.0; 50], RATE, 0));
    assert!(first.duplicates.is_empty() && first.rejected.is_empty());
    assert_eq!(segmenter.pending_chunks(), 1);
}

#[test]
fn audio_from_before_everything_received_is_out_of_order() {
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    // A chunk stamped a minute and a half ahead, then the sensor's real audio: reported, never silently dropped
    // (further back than windows.max_jump_back_seconds, the timeline would start again instead).
    push(&mut segmenter, chunk("s", 100_000, vec![1.0; 1_000], RATE, 0));
    let late = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_000], RATE, 1));
    assert!(late.duplicates.is_empty());
    assert_eq!(late.rejected[0].cause, "out_of_order");
    assert!(late.rejected[0].reason.contains("1970-01-01T00:00:00Z"), "{}", late.rejected[0].reason);
}

#[test]
fn chunks_stay_pending_until_no_window_needs_them() {
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    let first = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 0));
    assert!(first.windows.is_empty());
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    let second = push(&mut segmenter, chunk("s", 1_500, vec![1.0; 1_000], RATE, 1));
    // Window [0, 2000) is cut; chunk 0 is still needed by [1000, 3000).
    assert_eq!(starts(&second), vec![0]);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    let third = push(&mut segmenter, chunk("s", 2_500, vec![1.0; 1_500], RATE, 2));
    assert_eq!(starts(&third), vec![1_000, 2_000]);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2)]));
    // Another sensor's pending chunk on another partition is reported alongside.
    let mut other = chunk("t", 0, vec![1.0; 500], RATE, 9);
    other.origin.partition = 1;
    push(&mut segmenter, other);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2), (1, 9)]));
}

#[test]
fn a_stored_sensor_continues_as_if_never_stopped() {
    let signal: Vec<f32> = (0..9_000).map(|i| (i as f32 * 0.003).sin()).collect();
    let spec = spec(1.0, 2_000);
    let whole = segment_in_chunks(&spec, &signal, 0, &[1_000]);
    let dir = tempfile::tempdir().unwrap();
    let mut first = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
    let mut windows = Vec::new();
    for (i, part) in signal.chunks(1_000).enumerate().take(4) {
        windows.extend(push(&mut first, chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
    }
    // Windows up to [2000, 4000) are cut; the next one needs chunk 3 and more.
    assert_eq!(first.pending_offsets(), BTreeMap::from([(0, 3)]));
    assert_eq!(first.park_all(), 1);
    assert_eq!((first.active(), first.stored(), first.pending_offsets()), (0, 1, BTreeMap::new()));
    let mut second = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
    for (i, part) in signal.chunks(1_000).enumerate().skip(4) {
        windows.extend(push(&mut second, chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
    }
    let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
    assert!(whole.iter().map(content).eq(windows.iter().map(content)), "windows differ");
}

#[test]
fn a_resampled_run_is_flushed_into_the_store_and_resumes_without_a_gap() {
    let spec = config(1.0).build(32_000, 64_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
    for i in 0..2 {
        push(&mut first, chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i));
    }
    first.park_all();
    let mut second = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
    let mut windows = Vec::new();
    for i in 2..4 {
        windows.extend(push(&mut second, chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i)).windows);
    }
    // The flush completed window 0 (the resampler had held its last milliseconds back); it is cut on the first
    // push after the sensor comes back, and the run goes on from there.
    assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
    assert!(windows.iter().all(|w| w.coverage == 1.0 && !w.resumed));
}

#[test]
fn contiguity_follows_the_sample_clock() {
    // Each chunk's captured_at is 4 ms late against the previous one's end: within the 5 ms tolerance each time,
    // but the drift adds up and eventually starts a new run instead of silently shifting the audio.
    let mut segmenter = Segmenter::new(spec(1.0, 2_000));
    let mut rejected = 0;
    for i in 0..4i64 {
        let pushed = push(&mut segmenter, chunk("s", i * 1_004, vec![1.0; 1_000], RATE, i));
        rejected += pushed.rejected.len();
    }
    assert_eq!(rejected, 0);
    // Chunk 2 is 8 ms behind the sample clock: a new run with an 8 ms gap; chunk 3 continues it.
    assert_eq!(segmenter.write_pos("default", "s"), Some(4_008));
}

#[test]
fn other_rates_are_resampled_onto_the_same_grid() {
    let spec = config(1.0).build(32_000, 64_000).unwrap();
    let mut segmenter = Segmenter::new(spec);
    let mut windows = Vec::new();
    for (i, part) in vec![0.25f32; 48_000 * 4].chunks(48_000).enumerate() {
        windows.extend(push(&mut segmenter, chunk("s", 48_000 * i as i64, part.to_vec(), 48_000, i as i64)).windows);
    }
    assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
    let middle = &windows[1].samples[16_000..48_000];
    assert!(middle.iter().all(|x| (x - 0.25).abs() < 1e-3));
}

/// `signal` at RATE from sample 0 in chunks of `size`, as `(partition, chunk)`: chunks alternate between
/// partitions 0 and 1, each partition in its own offset order.
fn alternating(signal: &[f32], size: usize) -> Vec<AudioChunk> {
    signal
        .chunks(size)
        .enumerate()
        .map(|(i, part)| {
            let mut c = chunk("s", (i * size) as i64, part.to_vec(), RATE, (i / 2) as i64);
            c.origin.partition = (i % 2) as i32;
            c
        })
        .collect()
}

fn progress(partition: i32, read_ms: Option<i64>, caught_up: bool) -> PartitionProgress {
    PartitionProgress { partition, read_ms, caught_up }
}

#[test]
fn r13_chunks_from_several_partitions_are_placed_in_captured_at_order_however_fast_each_is_read() {
    let in_order_spec = spec(1.0, 2_000);
    let spec = WindowsConfig { lateness_ms: 1_000, ..config(1.0) }.build(RATE, 2_000).unwrap();
    let signal: Vec<f32> = (0..12_000).map(|i| (i as f32 * 0.01).sin()).collect();
    let in_order = segment_in_chunks(&in_order_spec, &signal, 0, &[700]);
    // Sent one after the other (a millisecond apart), every other one to the other partition.
    let chunks: Vec<AudioChunk> = alternating(&signal, 700)
        .into_iter()
        .enumerate()
        .map(|(i, c)| AudioChunk { sent_ms: 10_000 + i as i64, ..c })
        .collect();
    let last_sent = |partition: i32| chunks.iter().filter(|c| c.origin.partition == partition).map(|c| c.sent_ms).max();
    let (even, odd): (Vec<_>, Vec<_>) = chunks.iter().cloned().partition(|c| c.origin.partition == 0);
    let mut segmenter = Segmenter::new(spec.clone()).with_partitions(2);
    let mut out = Pushed::default();
    // Partition 0 is read to its end long before partition 1 (a worker busy with something else): every chunk
    // waits for the gap before it, whatever the clock says.
    for (i, c) in even.into_iter().enumerate() {
        segmenter.push(c, 100 + i as u64, 100 + i as u64, &mut out);
    }
    segmenter.progress(progress(0, last_sent(0), true));
    segmenter.release(Some(1_000_000), 1_000_000, &mut out);
    assert!(out.windows.is_empty(), "partition 1 has not been read: audio sent before may be there");
    assert_eq!(segmenter.oldest_held(), Some(100));
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    for (i, c) in odd.into_iter().enumerate() {
        segmenter.push(c, 2_000_000 + i as u64, 2_000_000 + i as u64, &mut out);
    }
    segmenter.progress(progress(1, last_sent(1), false));
    segmenter.release(Some(2_000_100), 2_000_100, &mut out);
    assert!(out.rejected.is_empty() && out.duplicates.is_empty(), "{:?}", out.rejected);
    let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
    assert!(in_order.iter().map(content).eq(out.windows.iter().map(content)), "windows differ from in order");
    assert_eq!(segmenter.oldest_held(), None);

    // With every partition read to its end, a chunk after a gap waits `lateness_ms` from when it was sent for
    // the audio before it; audio of the gap arriving later is out of order.
    let mut segmenter = Segmenter::new(spec).with_partitions(2);
    segmenter.progress(progress(0, None, true));
    segmenter.progress(progress(1, None, true));
    let mut out = Pushed::default();
    segmenter.push(AudioChunk { sent_ms: 0, ..chunk("s", 0, vec![1.0; 1_000], RATE, 0) }, 0, 0, &mut out);
    segmenter.push(AudioChunk { sent_ms: 10, ..chunk("s", 2_000, vec![1.0; 3_000], RATE, 2) }, 10, 10, &mut out);
    segmenter.release(Some(1_009), 1_009, &mut out);
    assert!(out.windows.is_empty(), "the first chunk waited its lateness, the second not yet");
    segmenter.release(Some(1_010), 1_010, &mut out);
    // (The window at 1 s holds no audio of the first run and starts before the second's grid point: skipped.)
    assert_eq!(
        out.windows.iter().map(|w| (w.key.start, w.coverage)).collect::<Vec<_>>(),
        [(0, 0.5), (2_000, 1.0), (3_000, 1.0)]
    );
    segmenter.push(chunk("s", 1_000, vec![1.0; 1_000], RATE, 1), 2_000, 2_000, &mut out);
    assert_eq!(out.rejected.iter().map(|l| l.cause).collect::<Vec<_>>(), ["out_of_order"]);
}

#[test]
fn r13_a_clock_that_jumps_back_far_starts_a_new_timeline_and_a_short_jump_is_out_of_order() {
    let spec = WindowsConfig { max_jump_back_seconds: 100, ..config(1.0) }.build(RATE, 2_000).unwrap();
    let mut segmenter = Segmenter::new(spec);
    // The first chunk's clock was far ahead (a poisoned timestamp, a clock set wrong, then corrected).
    let future = push(&mut segmenter, chunk("s", 1_000_000, vec![1.0; 3_500], RATE, 0));
    assert_eq!(starts(&future), [1_000_000, 1_001_000]);
    let back = push(&mut segmenter, chunk("s", 0, vec![1.0; 3_500], RATE, 1));
    assert!(back.rejected.is_empty());
    // The old timeline's tail is cut padded, and the new one begins at the chunk.
    assert_eq!(starts(&back), [1_002_000, 1_003_000, 0, 1_000]);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 1)]));
    // 50 s back is within the bound: out of order.
    push(&mut segmenter, chunk("s", 60_000, vec![1.0; 1_000], RATE, 2));
    let late = push(&mut segmenter, chunk("s", 10_000, vec![1.0; 1_000], RATE, 3));
    assert_eq!(late.rejected.iter().map(|l| l.cause).collect::<Vec<_>>(), ["out_of_order"]);
}

#[test]
fn r13_a_quiet_sensor_moves_to_the_store_and_its_file_goes_once_its_audio_is_durable() {
    let spec = WindowsConfig { park_after_seconds: 2, ..config(1.0) }.build(RATE, 2_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut segmenter = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
    let mut out = Pushed::default();
    segmenter.push(chunk("quiet", 0, vec![1.0; 2_500], RATE, 0), 1_000, 1_000, &mut out);
    segmenter.push(chunk("busy", 0, vec![1.0; 2_500], RATE, 1), 1_000, 1_000, &mut out);
    assert_eq!(starts(&out), [0, 0]);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    segmenter.push(chunk("busy", 2_500, vec![1.0; 1_000], RATE, 2), 2_500, 2_500, &mut out);
    assert_eq!(segmenter.park_quiet(2_999), 0);
    assert_eq!(segmenter.park_quiet(3_000), 1, "quiet for 2 s");
    // Only the busy sensor's chunks hold their partition back now.
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 1)]));
    assert_eq!((segmenter.active(), segmenter.stored()), (1, 1));

    // A new job (the same store) brings the quiet sensor back with its next chunk.
    let mut segmenter = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
    let mut out = Pushed::default();
    segmenter.push(chunk("quiet", 2_500, vec![2.0; 2_000], RATE, 9), 10_000, 10_000, &mut out);
    let windows: Vec<(i64, f32)> = out.windows.iter().map(|w| (w.key.start, w.coverage)).collect();
    assert_eq!(windows, [(1_000, 1.0), (2_000, 1.0)]);
    assert_eq!(out.windows[0].samples[1_499..1_501], [1.0, 2.0], "the stored audio and the new audio, joined");
    // The stored chunk is used up at 10 000; its file goes once that time is durable.
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 9)]));
    segmenter.remove_obsolete(|t| *t >= 10_000);
    assert_eq!(segmenter.stored(), 1);
    segmenter.remove_obsolete(|t| *t > 10_000);
    assert_eq!(segmenter.stored(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn r13_audio_held_back_beyond_its_limit_is_placed_at_once() {
    let spec = WindowsConfig { lateness_ms: 60_000, ..config(1.0) }.build(RATE, 2_000).unwrap();
    // 3 000 samples may be held, each costing its f32 and three copies at the model's rate (a buffer, and two
    // overlapping windows): the second sensor's first chunk makes the first one's wait end.
    assert_eq!(spec.copies(), 3);
    let mut segmenter = Segmenter::new(spec).with_held_limit(3_000 * (4 + 3 * 4));
    let mut out = Pushed::default();
    segmenter.push(chunk("a", 0, vec![1.0; 2_500], RATE, 0), 0, 0, &mut out);
    assert!(out.windows.is_empty());
    segmenter.push(chunk("b", 0, vec![1.0; 2_500], RATE, 1), 1, 1, &mut out);
    assert!(out.windows.is_empty());
    segmenter.fit_held_limit(1, &mut out);
    assert_eq!(out.windows.iter().map(|w| w.key.sensor.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(segmenter.oldest_held(), Some(1));
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
}

#[test]
fn r15_a_sensor_holds_the_audio_it_sent_not_the_silence_before_it() {
    // A hop of 4 s at 1 kHz: a sensor whose first 600 ms start 3.4 s after a grid point once held 3.4 s of zeros too.
    let spec = spec(4.0, 4_000);
    let mut segmenter = Segmenter::new(spec.clone());
    let mut windows = push(&mut segmenter, chunk("s", 3_400, vec![0.5; 590], RATE, 0)).windows;
    let bytes = segmenter.sensor_bytes();
    assert!(bytes < 600 * 4 + 1_000, "a sensor with 590 samples holds {bytes} bytes");
    // Its window still starts on the grid, silent before the sensor's first sample.
    windows.extend(push(&mut segmenter, chunk("s", 3_990, vec![0.25; 10], RATE, 1)).windows);
    assert_eq!(windows.len(), 1);
    let window = &windows[0];
    assert_eq!((window.key.start, window.coverage, window.samples.len()), (0, 0.15, 4_000));
    assert_eq!((window.samples[3_399], window.samples[3_400], window.samples[3_999]), (0.0, 0.5, 0.25));
    assert!(window.samples[..3_400].iter().all(|&x| x == 0.0));
}

#[test]
fn r15_sensors_beyond_their_memory_limit_move_to_the_store_and_continue_as_if_never_moved() {
    let spec = spec(1.0, 2_000);
    let signal: Vec<f32> = (0..3_000).map(|i| (i as f32 * 0.01).sin()).collect();
    let sensors: Vec<String> = (0..200).map(|i| format!("s{i:03}")).collect();
    // Every sensor sends its first 500 samples, then the rest; unbounded, that is the reference.
    let feed = |segmenter: &mut Segmenter, from: usize, to: usize, part: i64| {
        let mut windows = Vec::new();
        for (n, sensor) in sensors.iter().enumerate() {
            let offset = part * 1_000 + n as i64;
            let mut pushed = Pushed::default();
            let time = part as u64 * 1_000 + n as u64;
            segmenter.push(
                chunk(sensor, from as i64, signal[from..to].to_vec(), RATE, offset),
                time,
                time,
                &mut pushed,
            );
            segmenter.fit_sensor_limit();
            windows.extend(pushed.windows);
        }
        windows
    };
    let mut unbounded = Segmenter::new(spec.clone());
    let mut reference = feed(&mut unbounded, 0, 500, 0);
    reference.extend(feed(&mut unbounded, 500, 3_000, 1));
    let per_sensor = unbounded.sensor_bytes() / sensors.len();

    let dir = tempfile::tempdir().unwrap();
    let limit = 20 * per_sensor.max(3_000);
    let mut bounded = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap()).with_sensor_limit(limit);
    let mut windows = feed(&mut bounded, 0, 500, 0);
    assert!(bounded.sensor_bytes() <= limit, "{} bytes of sensors over a limit of {limit}", bounded.sensor_bytes());
    assert!(bounded.stored() > 100, "only {} sensors moved to the store", bounded.stored());
    windows.extend(feed(&mut bounded, 500, 3_000, 1));
    assert!(bounded.sensor_bytes() <= limit, "{} bytes of sensors over a limit of {limit}", bounded.sensor_bytes());
    assert_eq!(windows.len(), reference.len());
    let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
    let mut got: Vec<_> = windows.iter().map(content).collect();
    let mut want: Vec<_> = reference.iter().map(content).collect();
    got.sort_by(|a, b| (&a.0.sensor, a.0.start).cmp(&(&b.0.sensor, b.0.start)));
    want.sort_by(|a, b| (&a.0.sensor, a.0.start).cmp(&(&b.0.sensor, b.0.start)));
    assert!(got == want, "windows differ from those of a segmenter without a limit");
}

#[test]
fn r15_a_quiet_sensor_s_tail_is_cut_padded_and_audio_that_continues_it_goes_on_after_it() {
    let spec = WindowsConfig { flush_tail_seconds: 2, ..config(1.0) }.build(RATE, 2_000).unwrap();
    let signal: Vec<f32> = (0..9_000).map(|i| 0.5 + (i as f32 * 0.01).sin() / 4.0).collect();
    let reference = segment_in_chunks(&spec, &signal, 0, &[3_700, 5_300]);
    let mut segmenter = Segmenter::new(spec.clone());
    let mut out = Pushed::default();
    segmenter.push(chunk("s", 0, signal[..3_700].to_vec(), RATE, 0), 1_000, 1_000, &mut out);
    assert_eq!(starts(&out), [0, 1_000]);
    assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    let mut tail = Pushed::default();
    assert_eq!(segmenter.flush_tails(Some(2_999), 2_999, &mut tail), 0, "quiet for 1.999 s");
    assert_eq!(segmenter.flush_tails(Some(3_000), 3_000, &mut tail), 1, "quiet for 2 s");
    // The windows at 2 s and 3 s hold 1.7 s and 0.7 s of the 3.7 s sent (at least the 0.5 s of min_coverage); the
    // one at 4 s would hold none.
    let cut: Vec<(i64, f32, &str)> =
        tail.windows.iter().map(|w| (w.key.start, w.coverage, w.key.sensor.as_str())).collect();
    assert_eq!(cut, [(2_000, 0.85, "s"), (3_000, 0.35, "s")]);
    assert_eq!(tail.windows[0].samples[..1_700], signal[2_000..3_700]);
    assert!(tail.windows[0].samples[1_700..].iter().all(|&x| x == 0.0), "padded with silence");
    // Nothing holds the partition back any more, and a second look cuts nothing.
    assert_eq!(segmenter.pending_offsets(), BTreeMap::new());
    assert_eq!(segmenter.flush_tails(Some(60_000), 60_000, &mut tail), 0);
    assert_eq!(tail.windows.len(), 2);

    // The sensor continues: the windows cut stand, and the next ones are those it would have had.
    let mut later = Pushed::default();
    segmenter.push(chunk("s", 3_700, signal[3_700..].to_vec(), RATE, 1), 70_000, 70_000, &mut later);
    let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
    let want: Vec<_> = reference.iter().filter(|w| w.key.start >= 4_000).map(content).collect();
    assert_eq!(starts(&later), [4_000, 5_000, 6_000, 7_000]);
    assert!(later.windows.iter().map(content).eq(want), "windows after the cut differ from those without it");
}

#[test]
fn r15_a_stored_tail_is_cut_in_the_store_and_one_stored_by_an_earlier_run_after_the_same_quiet() {
    let spec = WindowsConfig { flush_tail_seconds: 5, park_after_seconds: 1, ..config(1.0) };
    let spec = spec.build(RATE, 2_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), 0, 1).unwrap();
    let mut segmenter = Segmenter::new(spec.clone()).with_store(open());
    let mut out = Pushed::default();
    segmenter.push(chunk("a", 0, vec![1.0; 2_600], RATE, 0), 0, 0, &mut out);
    segmenter.push(chunk("b", 0, vec![1.0; 2_600], RATE, 1), 0, 0, &mut out);
    assert_eq!(segmenter.park_quiet(1_000), 2);
    // Their tails are cut from the store, which keeps them cut.
    let mut tail = Pushed::default();
    assert_eq!(segmenter.flush_tails(Some(5_000), 5_000, &mut tail), 2);
    let mut cut: Vec<(&str, i64, f32)> =
        tail.windows.iter().map(|w| (w.key.sensor.as_str(), w.key.start, w.coverage)).collect();
    cut.sort_by(|x, y| x.partial_cmp(y).unwrap());
    assert_eq!(cut, [("a", 1_000, 0.8), ("a", 2_000, 0.3), ("b", 1_000, 0.8), ("b", 2_000, 0.3)]);
    assert_eq!((segmenter.active(), segmenter.stored()), (0, 2));

    // A stored sensor whose tail was not cut (the job stopped first) is cut after five quiet seconds of the next run.
    let mut segmenter = Segmenter::new(spec.clone()).with_store(open());
    segmenter.push(chunk("c", 0, vec![1.0; 2_600], RATE, 2), 0, 0, &mut Pushed::default());
    assert_eq!(segmenter.park_all(), 1);
    let mut next = Segmenter::new(spec).with_store(open());
    let mut tail = Pushed::default();
    assert_eq!(next.flush_tails(Some(100_000), 100_000, &mut tail), 0, "the first look starts the wait");
    assert_eq!(next.flush_tails(Some(104_999), 104_999, &mut tail), 0);
    assert_eq!(next.flush_tails(Some(105_000), 105_000, &mut tail), 1, "a and b were cut already");
    let cut: Vec<(&str, i64)> = tail.windows.iter().map(|w| (w.key.sensor.as_str(), w.key.start)).collect();
    assert_eq!(cut, [("c", 1_000), ("c", 2_000)]);
}

#[test]
fn r15_at_the_end_of_a_backfill_every_tail_is_cut_resampled_audio_included() {
    // 3 s of 48 kHz audio for a 2 s window at 32 kHz and a 1 s hop: windows at 0 and 1 s are complete but for
    // the resampler's last milliseconds, and the one at 2 s holds 1 s.
    let spec = WindowsConfig { flush_tail_seconds: 0, ..config(1.0) }.build(32_000, 64_000).unwrap();
    for cut_at_end in [false, true] {
        let mut segmenter = Segmenter::new(spec.clone()).with_tails_cut_at_end(cut_at_end);
        let mut out = Pushed::default();
        segmenter.push(chunk("s", 0, vec![0.25; 144_000], 48_000, 0), 0, 0, &mut out);
        assert_eq!(starts(&out), [0]);
        assert_eq!(segmenter.flush_tails(Some(1_000_000), 1_000_000, &mut out), 0, "flush_tail_seconds = 0");
        segmenter.flush_tails(None, 1_000_000, &mut out);
        let windows: Vec<(i64, f32)> = out.windows.iter().map(|w| (w.key.start, w.coverage)).collect();
        if cut_at_end {
            assert_eq!(windows, [(0, 1.0), (32_000, 1.0), (64_000, 0.5)]);
        } else {
            assert_eq!(windows, [(0, 1.0)]);
        }
    }
}

#[test]
fn r15_a_held_chunk_holds_back_neither_the_windows_progress_nor_the_reads_that_end_its_wait() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::core::{Inspect, Probe};
    use timely::dataflow::operators::vec::Input;

    use crate::metrics::Metrics;

    let spec = WindowsConfig { lateness_ms: 60_000, ..config(1.0) }.build(RATE, 2_000).unwrap();
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let into = seen.clone();
        let (mut chunks, mut reads, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (chunks_in, chunks) = scope.new_input::<AudioChunk>();
            let (reads_in, reads) = scope.new_input::<PartitionProgress>();
            let segmenter = Segmenter::new(spec).with_partitions(2);
            let (windows, _, _) = chunks.segment(reads, segmenter, None, Metrics::unregistered());
            let windows = windows.inspect_core(move |event| {
                if let Ok((time, windows)) = event {
                    let time = *time.least().expect("data travel with a time");
                    into.borrow_mut().extend(windows.iter().map(|w: &Window| (time, w.key.start)));
                }
            });
            let (probe, _) = windows.probe();
            (chunks_in, reads_in, probe)
        });
        // A sensor's first chunk, read at time 1 from partition 0, waits for partition 1, which nothing has read.
        chunks.advance_to(1);
        reads.advance_to(1);
        chunks.send(chunk("a", 0, vec![1.0; 2_500], RATE, 0));
        reads.send(progress(0, Some(10_000), false));
        chunks.advance_to(9);
        reads.advance_to(9);
        for _ in 0..20 {
            worker.step();
        }
        assert!(seen.borrow().is_empty(), "the chunk waits for partition 1");
        // Meanwhile the windows' progress follows the input's. (It once stayed at the held chunk's arrival, and the
        // source's read-ahead, which follows it, stopped the reads that would end the wait.)
        assert!(!probe.less_than(&9), "the windows' progress waits for the held chunk");
        // Partition 1 is read past the chunk: its window goes out at that time.
        reads.send(progress(1, Some(10_000), false));
        chunks.advance_to(12);
        reads.advance_to(12);
        worker.step_while(|| probe.less_than(&12));
        assert_eq!(*seen.borrow(), [(9, 0)]);
    });
}
