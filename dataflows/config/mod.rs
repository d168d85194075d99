//! Job configuration: a TOML file (the profiles in `config/`) read in two phases — serde structs that refuse unknown
//! keys, then a validating `build` into runtime settings whose errors name the file, the section and the field.
//!
//! Relative paths inside a file are resolved against the directory holding that file. Every section is here, the
//! servers' included (`api`, `http`): the servers import their settings, never the other way round.

pub mod api;
pub mod http;

use std::path::{Path, PathBuf};

use chorus_connectors::kafka::{KafkaConfig, KafkaSettings};
use chorus_connectors::parquet::{ArchiveConfig, ArchiveSettings};
use chorus_operators::FieldError;
use chorus_operators::embed::{EmbedConfig, EmbedSettings, ModelConfig, ModelSpec};
use chorus_operators::index::{IndexConfig, IndexParams};
use chorus_operators::refine::{RefineConfig, RefineParams};
use chorus_operators::schedule::{SchedulingConfig, SchedulingSpec};
use chorus_operators::segment::{WindowSpec, WindowsConfig};
use serde::Deserialize;

pub use self::api::{ApiConfig, ApiSettings};
pub use self::http::HttpConfig;

/// A config file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Timely worker threads in this process (`chorus run -w` overrides it).
    pub workers: usize,
    /// Directory of the job's state between runs (`sensors/`: the audio quiet sensors, and every sensor at a clean
    /// stop, still wait a window with; the refinement's saved graph); relative to this file.
    pub state_dir: PathBuf,
    /// Seconds a stop (SIGTERM, Ctrl-C) may take to drain, flush and commit before the job exits with an error
    /// (nothing is lost then either: it re-reads from the last commit).
    pub shutdown_timeout_seconds: u64,
    /// Resident memory the job may use, in MiB. What the model and runtime leave of it bounds the audio each worker
    /// reads ahead of the embedding stage; beyond that, reading pauses and Kafka lag grows instead.
    pub memory_budget_mb: usize,
    /// The broker, topics and message limits.
    pub kafka: KafkaConfig,
    /// The ONNX embedding model and its contract.
    pub model: ModelConfig,
    /// How inference runs.
    pub embed: EmbedConfig,
    /// How the embedding stage orders work under load.
    pub scheduling: SchedulingConfig,
    /// How audio is cut into windows.
    pub windows: WindowsConfig,
    /// HNSW parameters and snapshots.
    pub index: IndexConfig,
    /// Graph refinement: the kNN graph, refined embeddings, label propagation, clusters.
    pub refine: RefineConfig,
    /// The Parquet archive.
    pub archive: ArchiveConfig,
    /// Health and metrics endpoints, and the query API.
    pub http: HttpConfig,
    /// The query API's limits, cache and access.
    pub api: ApiConfig,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            workers: 1,
            state_dir: PathBuf::from("var/state"),
            shutdown_timeout_seconds: 30,
            memory_budget_mb: 1_024,
            kafka: KafkaConfig::default(),
            model: ModelConfig::default(),
            embed: EmbedConfig::default(),
            scheduling: SchedulingConfig::default(),
            windows: WindowsConfig::default(),
            index: IndexConfig::default(),
            refine: RefineConfig::default(),
            archive: ArchiveConfig::default(),
            http: HttpConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Worker threads in this process.
    pub workers: usize,
    /// Job state between runs.
    pub state_dir: PathBuf,
    /// Longest a stop may take.
    pub shutdown_timeout: std::time::Duration,
    /// Resident memory budget in bytes.
    pub memory_budget: usize,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Model contract.
    pub model: ModelSpec,
    /// Inference.
    pub embed: EmbedSettings,
    /// Work order under load.
    pub scheduling: SchedulingSpec,
    /// Window geometry at the model's rate.
    pub windows: WindowSpec,
    /// Index.
    pub index: IndexParams,
    /// Refinement.
    pub refine: RefineParams,
    /// Archive.
    pub archive: ArchiveSettings,
    /// Where the health and metrics endpoints and the query API listen, when they are on.
    pub http: Option<std::net::SocketAddr>,
    /// Query API settings.
    pub api: ApiSettings,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Occurs when the file cannot be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Occurs when the file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key, line and column.
        message: String,
    },
    /// Occurs when a value is well-formed but unusable.
    #[error("{path}: [{section}] {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Section (`kafka`, `model`, ...; empty for top-level keys).
        section: &'static str,
        /// Field within the section.
        field: &'static str,
        /// Why the value is rejected.
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let invalid = |section: &'static str| {
            move |e: FieldError| ConfigError::Invalid {
                path: path.to_path_buf(),
                section,
                field: e.field,
                message: e.message,
            }
        };
        if !(1..=256).contains(&file.workers) {
            return Err(invalid("")(FieldError::new("workers", format!("{} is outside 1..=256", file.workers))));
        }
        if !(128..=1_048_576).contains(&file.memory_budget_mb) {
            let message = format!("{} is outside 128..=1048576", file.memory_budget_mb);
            return Err(invalid("")(FieldError::new("memory_budget_mb", message)));
        }
        let model = file.model.build(&base).map_err(invalid("model"))?;
        let embed = file.embed.build(&base).map_err(invalid("embed"))?;
        Ok(Config {
            path: path.to_path_buf(),
            workers: file.workers,
            memory_budget: file.memory_budget_mb << 20,
            state_dir: base.join(&file.state_dir),
            shutdown_timeout: std::time::Duration::from_secs(file.shutdown_timeout_seconds.max(1)),
            kafka: file.kafka.build(&base).map_err(invalid("kafka"))?,
            scheduling: file.scheduling.build(embed.max_batch).map_err(invalid("scheduling"))?,
            embed,
            windows: file.windows.build(model.sample_rate, model.window).map_err(invalid("windows"))?,
            index: file.index.build(&base).and_then(|index| fits(index, model.dim)).map_err(invalid("index"))?,
            refine: file.refine.build(&base).map_err(invalid("refine"))?,
            archive: file
                .archive
                .build(&base)
                .map(|mut archive| {
                    archive.compaction.memory_bytes =
                        file.archive.compaction.memory_for_budget(file.memory_budget_mb << 20);
                    archive
                })
                .map_err(invalid("archive"))?,
            http: file.http.build().map_err(invalid("http"))?,
            api: file.api.build().map_err(invalid("api"))?,
            model,
        })
    }
}

/// An index budget must hold at least a full open shard: the open shard cannot move down a tier, so a smaller budget
/// would not bound the index.
fn fits(index: IndexParams, dim: usize) -> Result<IndexParams, FieldError> {
    let (Some(budget), open) = (index.memory_budget, index.open_shard_bytes(dim)) else { return Ok(index) };
    if open > budget {
        return Err(FieldError::new(
            "memory_budget_mb",
            format!(
                "{} MiB cannot hold a full open shard: shard_max_points = {} points of {dim} dimensions take about {} \
                 MiB, and the open shard never moves down a tier; raise memory_budget_mb or lower shard_max_points",
                budget >> 20,
                index.shard_max_points,
                open.div_ceil(1 << 20)
            ),
        ));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/chorus/test.toml"), text)
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let config = parse("[model]\npath = \"m.onnx\"\n[embed]\nonnxruntime = \"/opt/ort.so\"\n").unwrap();
        assert_eq!(config.model.path, Path::new("/etc/chorus/m.onnx"));
        assert_eq!(config.model.name, "m");
        assert_eq!(config.embed.library, Path::new("/opt/ort.so"));
        assert_eq!(config.windows.window, 160_000);
        assert_eq!(config.archive.dir, Path::new("/etc/chorus/var/archive"));
    }

    #[test]
    fn r15_an_index_budget_that_cannot_hold_a_full_open_shard_is_refused() {
        let base = "[model]\npath = \"m.onnx\"\n[embed]\nonnxruntime = \"/opt/ort.so\"\n[index]\nm = 32\nbuilder = \"hnsw_rs\"\n";
        let error = parse(&format!("{base}memory_budget_mb = 64\nshard_max_points = 20000\n")).unwrap_err().to_string();
        assert!(error.contains("[index] memory_budget_mb"), "{error}");
        assert!(error.contains("shard_max_points = 20000 points of 1536 dimensions take about 139 MiB"), "{error}");
        let fits = parse(&format!("{base}memory_budget_mb = 64\nshard_max_points = 8000\n")).unwrap();
        assert_eq!(fits.index.open_shard_bytes(1536), 8_000 * (1536 * 4 + 32 * 2 * 16 + 96));
        // chorus's builder keeps a point in its vector, 2m + 1 slots of layer 0 and a little bookkeeping, and the
        // vector's int8 codes unless it builds at full precision.
        let own = |construction: &str| {
            let text = base.replace("hnsw_rs", &format!("chorus\"\nconstruction = \"{construction}"));
            let index = parse(&text).unwrap().index;
            index.open_shard_bytes(1536) / index.shard_max_points
        };
        assert!((1536 * 4 + 65 * 4..6_600).contains(&own("f32")), "{} bytes a point", own("f32"));
        assert!((1536 * 5 + 65 * 4..8_200).contains(&own("int8")), "{} bytes a point", own("int8"));
    }

    #[test]
    fn errors_name_the_file_section_and_field() {
        let error = parse("[windows]\nhopp_seconds = 1.0\n").unwrap_err().to_string();
        assert!(error.starts_with("/etc/chorus/test.toml:"), "{error}");
        assert!(error.contains("unknown field `hopp_seconds`"), "{error}");
        let error =
            parse("[model]\npath = \"m.onnx\"\n[embed]\nonnxruntime = \"o.so\"\n[windows]\nhop_seconds = 6.0\n")
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("/etc/chorus/test.toml: [windows] hop_seconds:"), "{error}");
        let error = parse("[embed]\nonnxruntime = \"o.so\"\n").unwrap_err().to_string();
        assert!(error.contains("[model] path: is required"), "{error}");
        let error =
            parse("[model]\npath = \"m.onnx\"\n[embed]\nonnxruntime = \"o.so\"\n[kafka]\ncompression = \"snappy\"\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("[kafka] compression: snappy is refused"), "{error}");
    }
}
