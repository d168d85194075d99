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
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("var/archive"),
            max_rows_per_file: 100_000,
            flush_interval_seconds: 10.0,
            zstd_level: 3,
            audio: true,
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
        Ok(ArchiveSettings {
            dir: base.join(&self.dir),
            max_rows_per_file: self.max_rows_per_file,
            flush_interval: Duration::from_secs_f64(self.flush_interval_seconds),
            zstd_level: self.zstd_level,
            audio: self.audio,
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
}
