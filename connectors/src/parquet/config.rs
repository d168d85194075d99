//! `[archive]`: where and how segments are written, as configured ([`ArchiveConfig`]) and validated
//! ([`ArchiveSettings`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_operators::FieldError;
use parquet::basic::ZstdLevel;
use serde::Deserialize;

/// `[archive]`: where and how segments are written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Root directory; a relative path is resolved against the config file's directory.
    pub dir: PathBuf,
    /// A file is written once this many rows wait for one space and date.
    pub max_rows_per_file: usize,
    /// Seconds a row may wait before its file is written (offsets are committed only after that).
    pub flush_interval_seconds: f64,
    /// zstd level, 1..=22.
    pub zstd_level: i32,
    /// Keep each segment's audio (16-bit PCM WAV at the model's rate) in the `audio` column, for listening and
    /// spectrograms: about 64 KB per second of windows at 32 kHz before compression.
    pub audio: bool,
    /// `[archive.compaction]`: merging the small files of each day partition (the archive's and the refinements
    /// dataset's).
    pub compaction: CompactionConfig,
}

/// `[archive.compaction]`: how the job merges the small files its flushes write.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Whether the job compacts in the background (`chorus compact` does it for an archive without a job).
    pub enabled: bool,
    /// Seconds between compaction rounds.
    pub interval_seconds: f64,
    /// Files of one size tier merged together on a day still written; each row is rewritten about
    /// log_fanout(day's bytes / 1 MiB) times over its day, and a day holds at most fanout - 1 files a tier.
    pub fanout: usize,
    /// A day before today (UTC) is closed once no file was written to it for this long: it is merged into one file
    /// (two at most, with late rows).
    pub close_after_seconds: f64,
    /// Size of a merged file at most, in MiB.
    pub max_file_mb: u64,
    /// On a day still written, files of at least this many MiB are merged no more until the day closes (each row
    /// is then rewritten about log_fanout(open_file_mb) times while its day is written, once more at its close).
    pub open_file_mb: u64,
    /// Memory a merge holds at most, in MiB (its inputs' batches and pages and its output's row group); by default a
    /// sixteenth of the job's `memory_budget_mb`, 8 to 64 MiB.
    pub memory_mb: Option<usize>,
    /// Seconds a swapped-out partition directory is kept for readers that opened it before the swap.
    pub grace_seconds: f64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            interval_seconds: 60.0,
            fanout: 8,
            close_after_seconds: 3_600.0,
            max_file_mb: 4_096,
            open_file_mb: 128,
            memory_mb: None,
            grace_seconds: 600.0,
        }
    }
}

impl CompactionConfig {
    /// What a merge may hold in a job of `budget` bytes: `memory_mb` if set, else a sixteenth of the budget within
    /// 8 to 64 MiB.
    pub fn memory_for_budget(&self, budget: usize) -> usize {
        self.memory_mb.map_or((budget / 16).clamp(8 << 20, 64 << 20), |mb| mb << 20)
    }

    /// Validates; the merged files are written at `zstd_level`. Without `memory_mb`, merges hold 64 MiB (the job
    /// sets its own share, see [`CompactionConfig::memory_for_budget`]).
    pub fn build(&self, zstd_level: i32) -> Result<super::Compaction, FieldError> {
        let seconds = |field: &'static str, value: f64, max: f64| {
            if value >= 0.0 && value <= max {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(FieldError::new(field, format!("{value} is outside [0, {max}]")))
            }
        };
        if !(2..=1_000).contains(&self.fanout) {
            return Err(FieldError::new("compaction.fanout", format!("{} is outside 2..=1000", self.fanout)));
        }
        if self.max_file_mb == 0 {
            return Err(FieldError::new("compaction.max_file_mb", "must be at least 1"));
        }
        if self.open_file_mb == 0 {
            return Err(FieldError::new("compaction.open_file_mb", "must be at least 1"));
        }
        if let Some(mb) = self.memory_mb
            && !(8..=65_536).contains(&mb)
        {
            return Err(FieldError::new("compaction.memory_mb", format!("{mb} is outside 8..=65536")));
        }
        seconds("compaction.interval_seconds", self.interval_seconds, 86_400.0)?;
        Ok(super::Compaction {
            fanout: self.fanout,
            close_after: seconds("compaction.close_after_seconds", self.close_after_seconds, 30.0 * 86_400.0)?,
            max_file_bytes: self.max_file_mb << 20,
            open_file_bytes: self.open_file_mb << 20,
            memory_bytes: self.memory_mb.unwrap_or(64) << 20,
            grace: seconds("compaction.grace_seconds", self.grace_seconds, 86_400.0)?,
            zstd_level,
        })
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("var/archive"),
            max_rows_per_file: 100_000,
            flush_interval_seconds: 10.0,
            zstd_level: 3,
            audio: true,
            compaction: CompactionConfig::default(),
        }
    }
}

impl ArchiveConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<ArchiveSettings, FieldError> {
        if self.dir.as_os_str().is_empty() {
            return Err(FieldError::new("dir", "is empty"));
        }
        if self.max_rows_per_file == 0 {
            return Err(FieldError::new("max_rows_per_file", "must be at least 1"));
        }
        if !(self.flush_interval_seconds > 0.0 && self.flush_interval_seconds <= 86_400.0) {
            return Err(FieldError::new(
                "flush_interval_seconds",
                format!("{} is outside (0, 86400]", self.flush_interval_seconds),
            ));
        }
        if ZstdLevel::try_new(self.zstd_level).is_err() || self.zstd_level < 1 {
            return Err(FieldError::new("zstd_level", format!("{} is outside 1..=22", self.zstd_level)));
        }
        let compaction = self.compaction.build(self.zstd_level)?;
        if self.compaction.interval_seconds <= 0.0 && self.compaction.enabled {
            return Err(FieldError::new("compaction.interval_seconds", "must be above 0 while compaction is enabled"));
        }
        Ok(ArchiveSettings {
            dir: base.join(&self.dir),
            max_rows_per_file: self.max_rows_per_file,
            flush_interval: Duration::from_secs_f64(self.flush_interval_seconds),
            zstd_level: self.zstd_level,
            audio: self.audio,
            compaction,
            compaction_interval: self
                .compaction
                .enabled
                .then(|| Duration::from_secs_f64(self.compaction.interval_seconds)),
        })
    }
}

/// Validated archive settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveSettings {
    /// Root directory.
    pub dir: PathBuf,
    /// Rows per file at most.
    pub max_rows_per_file: usize,
    /// Longest wait before a row is written.
    pub flush_interval: Duration,
    /// zstd level.
    pub zstd_level: i32,
    /// Whether segments' audio is kept.
    pub audio: bool,
    /// How the job (and `chorus compact`) compacts.
    pub compaction: super::Compaction,
    /// Time between the job's compaction rounds (`None`: the job does not compact).
    pub compaction_interval: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r15_open_file_mb_reaches_the_compaction_and_zero_is_refused_by_name() {
        let built = CompactionConfig { open_file_mb: 16, ..Default::default() }.build(3).unwrap();
        assert_eq!(built.open_file_bytes, 16 << 20);
        assert_eq!(CompactionConfig::default().build(3).unwrap().open_file_bytes, 128 << 20);
        let refused = CompactionConfig { open_file_mb: 0, ..Default::default() }.build(3).unwrap_err();
        assert_eq!(refused.field, "compaction.open_file_mb");
    }
}
