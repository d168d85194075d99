//! The job's memory budget: what the model and runtime leave of `memory_budget_mb`, split explicitly among the index,
//! the refinement, the archive writers, the segmenting workers' sensors and the audio read ahead of the embedding
//! stage. Each share is a bound its component keeps, and each is reported as `chorus_memory_budget_bytes{share}`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chorus_operators::metrics::Metrics;

use crate::Error;
use crate::config::Config;

/// Memory per byte of audio the archive writer holds: the samples, and while a file is written the Arrow array of
/// WAV files built from them (each row's samples are given up as its WAV file is made) and Parquet's pages; a bound.
const MEMORY_PER_ARCHIVED_AUDIO_BYTE: usize = 4;

/// Memory the refinement holds per segment of its horizon at 1536 dimensions with the default `[refine]` (measured
/// by `cargo bench --bench refine -- --skip-quality --skip-audio --skip-latency --skip-search --skip-sliding`:
/// 23 KB), rounded up; it scales with the dimension.
const REFINE_BYTES_PER_SEGMENT_AT_1536: usize = 24 << 10;

/// The least read-ahead a worker needs to keep the model busy, whatever its batches.
const MIN_READ_AHEAD: usize = 8 << 20;

/// The read-ahead a worker needs to fill its largest batch: `embed.max_batch` windows of decoded audio (f32), and at
/// least [`MIN_READ_AHEAD`]. With less, batches stay small whatever the backlog (the high-throughput profile, whose
/// model took 584 MiB for batches of 64, read 9 MiB ahead: batches of 3 windows, 10.6 windows/s).
fn min_read_ahead(config: &Config) -> usize {
    MIN_READ_AHEAD.max(config.embed.max_batch * config.model.window as usize * std::mem::size_of::<f32>())
}

/// What the budget gives each share, for the whole process (per worker where the field says so).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// What the model and the runtime took when the budget was split.
    pub resident: usize,
    /// The index's budget (`index.memory_budget_mb` per worker, for every worker).
    pub index: usize,
    /// Held back for the refinement's graph and arrangements: its horizon of one space.
    pub refine: usize,
    /// Held back for the background compaction's merges (`archive.compaction.memory_mb`, when the job compacts).
    pub compaction: usize,
    /// Memory of the archive writers' buffers.
    pub writers: usize,
    /// Memory of the segmenting workers' sensors, per worker.
    pub sensors: usize,
    /// Left unassigned: the allocator's fragmentation and the transient copies no share counts (a batch's input
    /// tensor, a Parquet file being encoded, a fetch response in librdkafka).
    pub headroom: usize,
    /// Memory of the audio read ahead of the embedding stage, per worker (see `wav::memory_cost`).
    pub read_ahead: usize,
    /// Audio bytes in one worker's archive writer buffer.
    pub archive_audio: usize,
    /// The resident memory the job keeps to: the budget less the headroom. Beyond it the read-ahead shrinks by as much
    /// (see [`Budget::pressure`]); the headroom is left for what comes and goes faster than that.
    pub target: usize,
}

/// Splits the memory budget among `workers` workers, from what the model and the runtime leave of it (measured
/// now that they are loaded): first the index's own budget, the refinement's horizon (for one space: each further
/// space adds as much) and the compaction's merges; of the rest, a quarter to the archive writers when the archive keeps audio, an eighth to the
/// sensors, a quarter left as headroom, and what remains to the audio read ahead. Refuses a budget that leaves a worker less than 8 MiB to read
/// ahead, naming what takes it.
pub fn split_budget(config: &Config, workers: usize) -> Result<Budget, Error> {
    split(config, workers, resident_bytes().unwrap_or(0))
}

fn split(config: &Config, workers: usize, resident: usize) -> Result<Budget, Error> {
    let budget = config.memory_budget;
    let spare = budget.saturating_sub(resident);
    let index = config.index.memory_budget.map_or(0, |per_worker| per_worker * workers);
    let per_segment = REFINE_BYTES_PER_SEGMENT_AT_1536 * config.model.dim.max(1) / 1536;
    let refine = if config.refine.enabled { config.refine.horizon_segments * per_segment } else { 0 };
    let compaction = config.archive.compaction_interval.map_or(0, |_| config.archive.compaction.memory_bytes);
    let rest = spare.saturating_sub(index).saturating_sub(refine).saturating_sub(compaction);
    let writers = if config.archive.audio { rest / 4 } else { 0 };
    let sensors = rest / 8;
    let headroom = rest / 4;
    let read_ahead = rest - writers - sensors - headroom;
    let needed = min_read_ahead(config);
    if read_ahead / workers < needed {
        return Err(Error::Job(format!(
            "memory_budget_mb = {} leaves too little for audio in flight: a worker needs {} MiB to fill a batch of \
             embed.max_batch = {} windows, and gets {} MiB; the model and runtime use {} MiB, the \
             index's budget (index.memory_budget_mb × {workers} workers) {} MiB, the refinement's horizon \
             (refine.horizon_segments) {} MiB, compaction (archive.compaction.memory_mb) {} MiB, the archive \
             writers {} MiB and the sensors {} MiB; raise memory_budget_mb or lower embed.max_batch, \
             index.memory_budget_mb, refine.horizon_segments or archive.compaction.memory_mb",
            budget >> 20,
            needed.div_ceil(1 << 20),
            config.embed.max_batch,
            (read_ahead / workers) >> 20,
            resident >> 20,
            index >> 20,
            refine >> 20,
            compaction >> 20,
            writers >> 20,
            sensors >> 20
        )));
    }
    let split = Budget {
        resident,
        index,
        refine,
        compaction,
        writers,
        sensors: sensors / workers,
        headroom,
        read_ahead: read_ahead / workers,
        archive_audio: writers / MEMORY_PER_ARCHIVED_AUDIO_BYTE / workers,
        target: budget - headroom,
    };
    tracing::info!(
        budget_mib = budget >> 20,
        resident_mib = resident >> 20,
        index_mib = index >> 20,
        refine_mib = refine >> 20,
        compaction_mib = compaction >> 20,
        writers_mib = writers >> 20,
        sensors_mib_per_worker = split.sensors >> 20,
        read_ahead_mib_per_worker = split.read_ahead >> 20,
        "Memory budget."
    );
    Ok(split)
}

impl Budget {
    /// What each of `workers` workers' read-ahead gives up while the process's resident memory is `resident`: its part
    /// of what the process is over [`Budget::target`]. The budget's shares are reckoned; this is measured, so that
    /// memory no share sees (the allocator's, the refinement's merges, the model's arena) is made room for.
    pub fn pressure(&self, resident: usize, workers: usize) -> usize {
        resident.saturating_sub(self.target) / workers.max(1)
    }

    /// Sets `chorus_memory_budget_bytes{share}`, for the whole process.
    pub fn report(&self, metrics: &Metrics, workers: usize) {
        let shares = [
            ("resident", self.resident),
            ("index", self.index),
            ("refine", self.refine),
            ("compaction", self.compaction),
            ("writers", self.writers),
            ("sensors", self.sensors * workers),
            ("headroom", self.headroom),
            ("read_ahead", self.read_ahead * workers),
        ];
        for (share, bytes) in shares {
            metrics.memory_budget.with_label_values(&[share]).set(bytes as i64);
        }
    }
}

/// How long a measure of resident memory counts towards the pressure (see [`RecentPeak`]).
pub const PEAK_WINDOW: Duration = Duration::from_secs(5);

/// The highest resident memory measured over the last [`PEAK_WINDOW`]. Resident memory comes and goes by a hundred
/// MiB within a second (audio stretches starting and ending, the refinement's merges, the allocator returning what
/// was freed): held to the target sample by sample, its peaks passed the budget by as much; held to the target by
/// its recent peak, its peaks stay near it.
#[derive(Debug, Default)]
pub struct RecentPeak {
    /// Measures that may still be the peak: later ones are lower, so each is the peak once those before it expire.
    candidates: VecDeque<(Instant, usize)>,
}

impl RecentPeak {
    /// Takes `resident`, measured at `now`; returns the highest measured over the last [`PEAK_WINDOW`].
    pub fn observe(&mut self, now: Instant, resident: usize) -> usize {
        while self.candidates.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= PEAK_WINDOW) {
            self.candidates.pop_front();
        }
        while self.candidates.back().is_some_and(|(_, r)| *r <= resident) {
            self.candidates.pop_back();
        }
        self.candidates.push_back((now, resident));
        self.candidates.front().map_or(resident, |(_, r)| *r)
    }
}

/// This process's resident memory, from /proc.
pub fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kb| kb << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(budget_mb: usize, index_mb: Option<usize>, refine: bool, audio: bool) -> Config {
        let text = "[model]\npath = \"m.onnx\"\n[embed]\nonnxruntime = \"/opt/ort.so\"\n";
        let mut config = Config::parse(std::path::Path::new("chorus.toml"), text).unwrap();
        config.memory_budget = budget_mb << 20;
        config.index.memory_budget = index_mb.map(|mb| mb << 20);
        config.refine.enabled = refine;
        config.archive.audio = audio;
        config.archive.compaction_interval = None;
        config
    }

    #[test]
    fn r16_the_jobs_compaction_takes_its_memory_bound_before_the_rest_is_split() {
        let mut config = config(1_024, Some(64), false, true);
        let without = split(&config, 2, 300 << 20).unwrap();
        config.archive.compaction_interval = Some(Duration::from_secs(60));
        let with = split(&config, 2, 300 << 20).unwrap();
        assert_eq!((without.compaction, with.compaction), (0, 64 << 20));
        let rest = (724 << 20) - (128 << 20) - (64 << 20);
        assert_eq!((with.writers, with.headroom), (rest / 4, rest / 4));
    }

    #[test]
    fn r15_the_read_ahead_gives_up_what_resident_memory_is_over_the_budget_less_the_headroom() {
        let budget = split(&config(1024, Some(192), true, true), 2, 100 << 20).unwrap();
        assert_eq!(budget.target, (1024 << 20) - budget.headroom);
        assert_eq!(budget.pressure(budget.target, 2), 0);
        assert_eq!(budget.pressure(900 << 20, 2), 0);
        assert_eq!(budget.pressure(budget.target + (30 << 20), 2), 15 << 20);
    }

    #[test]
    fn r15_the_pressure_follows_the_peak_of_the_last_seconds_not_the_last_sample() {
        let (mut peak, t0) = (RecentPeak::default(), Instant::now());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(peak.observe(at(0), 400), 400);
        assert_eq!(peak.observe(at(250), 520), 520);
        // A drop right after a peak: the peak still counts.
        assert_eq!(peak.observe(at(500), 410), 520);
        assert_eq!(peak.observe(at(4_000), 450), 520);
        // Once the peak is PEAK_WINDOW old, the highest since.
        assert_eq!(peak.observe(at(5_250), 430), 450);
        assert_eq!(peak.observe(at(8_999), 300), 450);
        assert_eq!(peak.observe(at(9_001), 200), 430);
        assert_eq!(peak.observe(at(10_250), 250), 300);
        // A new high is the peak at once.
        assert_eq!(peak.observe(at(10_251), 700), 700);
        assert_eq!(peak.candidates.len(), 1);
    }

    #[test]
    fn r15_every_share_is_taken_from_what_the_model_leaves_and_they_add_up_to_the_budget() {
        let mut config = config(1_024, Some(64), true, true);
        config.refine.horizon_segments = 2_000;
        let budget = split(&config, 2, 300 << 20).unwrap();
        // The refinement's horizon at 24 KiB a segment (the stand-in model is 1536-D).
        let refine = 2_000 * (24 << 10);
        let rest = (724 << 20) - (128 << 20) - refine;
        assert_eq!((budget.index, budget.refine, budget.writers), (128 << 20, refine, rest / 4));
        assert_eq!((budget.sensors, budget.headroom), (rest / 8 / 2, rest / 4));
        assert_eq!(budget.read_ahead, (rest - rest / 4 - rest / 8 - rest / 4) / 2);
        let total = budget.resident
            + budget.index
            + budget.refine
            + budget.writers
            + budget.headroom
            + 2 * (budget.sensors + budget.read_ahead);
        assert!((1_024 << 20) - total < 8, "the shares leave {} bytes unassigned", (1_024 << 20) - total);
    }

    #[test]
    fn a_budget_that_cannot_fill_the_largest_batch_is_refused_naming_it() {
        // 160 000-sample windows (5 s at 32 kHz) in batches of 64: 39 MiB of decoded audio per worker.
        let mut config = config(1_024, Some(96), true, true);
        config.embed.max_batch = 64;
        let error = split(&config, 2, 584 << 20).unwrap_err().to_string();
        assert!(
            error.contains("needs 40 MiB to fill a batch of embed.max_batch = 64 windows, and gets 24 MiB"),
            "{error}"
        );
        assert!(error.contains("the model and runtime use 584 MiB"), "{error}");
        // With the room, accepted: 77 MiB each.
        assert_eq!(split(&config, 2, 300 << 20).unwrap().read_ahead >> 20, 77);
        // 36 MiB each holds a batch of 4 windows (8 MiB at least), not one of 64.
        assert!(split(&config, 2, 520 << 20).is_err());
        config.embed.max_batch = 4;
        assert_eq!(split(&config, 2, 520 << 20).unwrap().read_ahead >> 20, 36);
    }

    #[test]
    fn r15_a_budget_the_index_takes_up_is_refused_naming_the_fields() {
        let error = split(&config(512, Some(200), false, false), 2, 150 << 20).unwrap_err().to_string();
        assert!(error.contains("memory_budget_mb = 512"), "{error}");
        assert!(error.contains("index.memory_budget_mb × 2 workers) 400 MiB"), "{error}");
    }
}
