//! Embedding: windows through an ONNX audio model (ONNX Runtime via `ort`, loaded at run time), in batches.
//!
//! The model contract — file, input and output tensor names, sample rate, window length, embedding dimension — comes
//! from configuration and is checked against the model's declared inputs and outputs when it is opened. The defaults
//! describe Perch 2.0 (`inputs` f32 [batch, 160000] at 32 kHz → `embedding` f32 [batch, 1536]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::cause::Cause;
use crate::metrics::Metrics;
use crate::record::{DeadLetter, Segment, Window, pcm16};
use crate::schedule::{Scheduler, SchedulingSpec, Step};
use crate::wakeup::Wakeup;
use crate::{Error, FieldError};

/// `[model]`: the ONNX embedding model and its input/output contract.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The ONNX file; a relative path is resolved against the directory of the config file.
    pub path: PathBuf,
    /// Name stored with every segment so embeddings of different models are never mixed (default: the file stem).
    pub name: Option<String>,
    /// Input tensor name: f32 `[batch, samples]`.
    pub input: String,
    /// Output tensor name: f32 `[batch, dim]`.
    pub output: String,
    /// Sample rate the model expects, in Hz.
    pub sample_rate: u32,
    /// Window length the model expects, in seconds.
    pub window_seconds: f64,
    /// Embedding dimension.
    pub dim: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::new(),
            name: None,
            input: "inputs".into(),
            output: "embedding".into(),
            sample_rate: 32_000,
            window_seconds: 5.0,
            dim: 1536,
        }
    }
}

impl ModelConfig {
    /// Validates the contract; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<ModelSpec, FieldError> {
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("path", "is required: the ONNX model file to run"));
        }
        if !(1_000..=768_000).contains(&self.sample_rate) {
            return Err(FieldError::new("sample_rate", format!("{} Hz is outside 1000..=768000", self.sample_rate)));
        }
        let window = self.window_seconds * f64::from(self.sample_rate);
        if self.window_seconds.is_nan()
            || self.window_seconds <= 0.0
            || (window - window.round()).abs() > 1e-6
            || window > f64::from(u32::MAX)
        {
            return Err(FieldError::new(
                "window_seconds",
                format!("{} is not a positive whole number of samples at {} Hz", self.window_seconds, self.sample_rate),
            ));
        }
        if self.dim == 0 {
            return Err(FieldError::new("dim", "must be at least 1"));
        }
        for (field, value) in [("input", &self.input), ("output", &self.output)] {
            if value.is_empty() {
                return Err(FieldError::new(field, "must name a tensor of the model"));
            }
        }
        let path = base.join(&self.path);
        let name = self.name.clone().unwrap_or_else(|| {
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        });
        Ok(ModelSpec {
            path,
            name,
            input: self.input.clone(),
            output: self.output.clone(),
            sample_rate: self.sample_rate,
            window: window.round() as u32,
            dim: self.dim,
        })
    }
}

/// A validated model contract.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The ONNX file.
    pub path: PathBuf,
    /// Name stored with segments.
    pub name: String,
    /// Input tensor name.
    pub input: String,
    /// Output tensor name.
    pub output: String,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Window length in samples.
    pub window: u32,
    /// Embedding dimension.
    pub dim: usize,
}

/// `[embed]`: how inference runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedConfig {
    /// ONNX Runtime's shared library (`libonnxruntime.so.*`); a relative path is resolved against the config file's
    /// directory. Empty: the `ORT_DYLIB_PATH` environment variable.
    pub onnxruntime: PathBuf,
    /// Most windows per call to the model.
    pub max_batch: usize,
    /// ONNX Runtime intra-op threads per worker; 0 shares the machine's cores among the workers.
    pub threads: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig { onnxruntime: PathBuf::new(), max_batch: 16, threads: 0 }
    }
}

impl EmbedConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<EmbedSettings, FieldError> {
        let library = if self.onnxruntime.as_os_str().is_empty() {
            match std::env::var_os("ORT_DYLIB_PATH") {
                Some(path) => PathBuf::from(path),
                None => {
                    return Err(FieldError::new(
                        "onnxruntime",
                        "is required (or set ORT_DYLIB_PATH): the path of libonnxruntime.so; \
                         scripts/tools.sh onnxruntime installs it",
                    ));
                }
            }
        } else {
            base.join(&self.onnxruntime)
        };
        if !(1..=4096).contains(&self.max_batch) {
            return Err(FieldError::new("max_batch", format!("{} is outside 1..=4096", self.max_batch)));
        }
        Ok(EmbedSettings { library, max_batch: self.max_batch, threads: self.threads, keep_audio: true })
    }
}

/// Validated inference settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedSettings {
    /// ONNX Runtime's shared library.
    pub library: PathBuf,
    /// Most windows per call.
    pub max_batch: usize,
    /// Intra-op threads per session (0: see [`EmbedSettings::per_worker`]).
    pub threads: usize,
    /// Whether segments carry their window's audio on (for the archive's `audio` column).
    pub keep_audio: bool,
}

impl EmbedSettings {
    /// The settings one of `workers` workers uses: with `threads = 0`, the machine's cores shared among them.
    pub fn per_worker(&self, workers: usize) -> EmbedSettings {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if self.threads == 0 { (cores / workers.max(1)).max(1) } else { self.threads };
        EmbedSettings { threads, ..self.clone() }
    }
}

/// Loads ONNX Runtime once per process and returns its environment.
pub fn runtime(library: &Path) -> Result<&'static Environment, Error> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    let _loading = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let failed = |message: String| Error::Runtime { path: library.display().to_string(), message };
    if !library.is_file() {
        return Err(failed("no such file; scripts/tools.sh onnxruntime installs the pinned library".into()));
    }
    let environment = ort::init_from(library)
        .map_err(|e| failed(e.to_string()))?
        .with_name("chorus")
        .with_telemetry(false)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

/// One ONNX Runtime session running the model on batches of windows.
pub struct Embedder {
    session: Session,
    spec: ModelSpec,
    max_batch: usize,
    /// Set when the model declares a fixed batch size: batches are padded to it.
    fixed_batch: Option<usize>,
    /// See [`EmbedSettings::keep_audio`].
    keep_audio: bool,
}

impl Embedder {
    /// Opens `spec.path` and checks its declared tensors against the contract.
    pub fn open(environment: &Environment, spec: &ModelSpec, settings: &EmbedSettings) -> Result<Self, Error> {
        let failed = |message: String| Error::Model { path: spec.path.display().to_string(), message };
        if !spec.path.is_file() {
            return Err(failed("no such file".into()));
        }
        let session = Session::builder(environment)
            .and_then(|b| b.with_intra_threads(settings.threads.max(1)).map_err(ort::Error::from))
            .and_then(|b| b.with_inter_threads(1).map_err(ort::Error::from))
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(ort::Error::from))
            .and_then(|mut b| b.commit_from_file(&spec.path))
            .map_err(|e| failed(format!("ONNX Runtime cannot load it: {e}")))?;

        let find = |outlets: &[ort::value::Outlet], name: &str, kind: &str| -> Result<Vec<i64>, Error> {
            let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
                failed(format!("has no {kind} named '{name}' (it has: {}); set model.{kind}", names.join(", ")))
            })?;
            match outlet.dtype() {
                ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Ok(shape.to_vec()),
                other => Err(failed(format!("{kind} '{name}' is {other}, not a float32 tensor"))),
            }
        };
        let input = find(session.inputs(), &spec.input, "input")?;
        let output = find(session.outputs(), &spec.output, "output")?;
        if input.len() != 2 || (input[1] != -1 && input[1] != i64::from(spec.window)) {
            return Err(failed(format!(
                "input '{}' has shape {input:?}; the config says [batch, {}] ({} s at {} Hz) — check \
                 model.sample_rate and model.window_seconds",
                spec.input,
                spec.window,
                f64::from(spec.window) / f64::from(spec.sample_rate),
                spec.sample_rate
            )));
        }
        if output.len() != 2 || (output[1] != -1 && output[1] != spec.dim as i64) {
            return Err(failed(format!(
                "output '{}' has shape {output:?}; the config says [batch, {}] — check model.dim",
                spec.output, spec.dim
            )));
        }
        let fixed_batch = (input[0] > 0).then_some(input[0] as usize);
        let max_batch = fixed_batch.unwrap_or(settings.max_batch);
        Ok(Embedder { session, spec: spec.clone(), max_batch, fixed_batch, keep_audio: settings.keep_audio })
    }

    /// The model contract.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Most windows per call.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs one full batch of silence, so ONNX Runtime allocates its working memory now rather than mid-stream.
    pub fn warm_up(&mut self) -> Result<(), Error> {
        let silence = vec![0.0f32; self.spec.window as usize];
        let batch: Vec<&[f32]> = (0..self.max_batch).map(|_| silence.as_slice()).collect();
        self.embed(&batch).map(|_| ())
    }

    /// Embeds up to `max_batch` windows of exactly `spec.window` samples each.
    pub fn embed(&mut self, windows: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        let n = self.spec.window as usize;
        if windows.len() > self.max_batch {
            return Err(Error::Inference(format!(
                "{} windows exceed the batch limit {}",
                windows.len(),
                self.max_batch
            )));
        }
        if let Some(bad) = windows.iter().find(|w| w.len() != n) {
            return Err(Error::Inference(format!("a window has {} samples, the model takes {n}", bad.len())));
        }
        let rows = self.fixed_batch.unwrap_or(windows.len());
        let mut flat = Vec::with_capacity(rows * n);
        for window in windows {
            flat.extend_from_slice(window);
        }
        flat.resize(rows * n, 0.0);
        let input = Tensor::from_array(([rows, n], flat)).map_err(|e| Error::Inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.spec.input.as_str() => input])
            .map_err(|e| Error::Inference(e.to_string()))?;
        let output = outputs
            .get(self.spec.output.as_str())
            .ok_or_else(|| Error::Inference(format!("the model produced no output '{}'", self.spec.output)))?;
        let (shape, values) = output.try_extract_tensor::<f32>().map_err(|e| Error::Inference(e.to_string()))?;
        let dim = self.spec.dim;
        if shape.len() != 2 || shape[0] as usize != rows || shape[1] as usize != dim {
            return Err(Error::Inference(format!(
                "output '{}' has shape {:?}, expected [{rows}, {dim}]",
                self.spec.output,
                shape.to_vec()
            )));
        }
        Ok(values.chunks_exact(dim).take(windows.len()).map(<[f32]>::to_vec).collect())
    }
}

/// Turns windows into segments by running the model, in the order and batch sizes the scheduler decides.
pub trait Embed<'scope> {
    /// Returns the segments, and the dead letters of windows the model failed on or that were shed under overload.
    ///
    /// # Examples
    /// The model and ONNX Runtime are the ones `scripts/tools.sh` installs: in `$CHORUS_TOOLS`, by default the
    /// repository's `.tools/`.
    /// ```
    /// use std::path::PathBuf;
    ///
    /// use chorus_operators::embed::{self, Embed, EmbedSettings, Embedder, ModelConfig};
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{Origin, Priority, SegmentKey, Window};
    /// use chorus_operators::schedule::SchedulingConfig;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    ///
    /// let tools = std::env::var_os("CHORUS_TOOLS")
    ///     .map(PathBuf::from)
    ///     .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools"));
    /// let model = ModelConfig { path: "models/chorus-standin-v1.onnx".into(), ..Default::default() };
    /// let model = model.build(&tools).unwrap();
    /// let settings = EmbedSettings {
    ///     library: tools.join("onnxruntime-1.32.0/libonnxruntime.so.1.32.0"),
    ///     max_batch: 4,
    ///     threads: 1,
    ///     keep_audio: false,
    /// };
    /// let embedder = Embedder::open(embed::runtime(&settings.library).unwrap(), &model, &settings).unwrap();
    /// let scheduling = SchedulingConfig::default().build(embedder.max_batch()).unwrap();
    /// let window = |start: i64, samples: usize| Window {
    ///     key: SegmentKey { space: "birds".into(), sensor: "s1".into(), start, sample_rate: 32_000, len: 160_000 },
    ///     samples: (0..samples).map(|i| (i as f32 * 0.05).sin() / 2.0).collect(),
    ///     coverage: 1.0,
    ///     origin: Origin { topic: "audio".into(), partition: 0, offset: start },
    ///     resumed: false,
    ///     priority: Priority::Normal,
    /// };
    /// // Two windows of the model's length (5 s at 32 kHz), and one it cannot take.
    /// let windows = vec![window(0, 160_000), window(160_000, 160_000), window(320_000, 100)];
    /// let (segments, dead_letters) = timely::example(move |scope| {
    ///     let (segments, dead) = windows.to_stream(scope).embed(embedder, scheduling, Metrics::unregistered());
    ///     let segments = segments.map(|segment| (segment.key.start, segment.embedding.len()));
    ///     (segments.capture(), dead.map(|letter| letter.reason).capture())
    /// });
    /// let segments: Vec<(i64, usize)> = segments.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// assert_eq!(segments, [(0, 1_536), (160_000, 1_536)]);
    /// let dead_letters: Vec<String> = dead_letters.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// assert_eq!(dead_letters.len(), 1);
    /// assert!(dead_letters[0].contains("a window has 100 samples"), "{dead_letters:?}");
    /// ```
    fn embed(
        self,
        embedder: Embedder,
        scheduling: SchedulingSpec,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Segment>, StreamVec<'scope, u64, DeadLetter>);
}

impl<'scope> Embed<'scope> for StreamVec<'scope, u64, Window> {
    fn embed(
        self,
        mut embedder: Embedder,
        scheduling: SchedulingSpec,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Segment>, StreamVec<'scope, u64, DeadLetter>) {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("Embed".to_owned(), scope);
        let info = builder.operator_info();
        let mut input = builder.new_input(self, Pipeline);
        let (segments_out, segments) = builder.new_output::<Vec<Segment>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let mut segments_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Segment>>>::from(segments_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
        builder.build(move |_capabilities| {
            let max_batch = scheduling.max_batch.min(embedder.max_batch());
            let mut scheduler = Scheduler::<(Window, u64)>::new(scheduling);
            // Capabilities for the times of queued windows, with how many are queued at each.
            let mut held: BTreeMap<u64, ([Capability<u64>; 2], usize)> = BTreeMap::new();
            let mut queued_here = 0i64;
            move |frontiers| {
                let now = Instant::now();
                input.for_each(|capability, windows| {
                    let time = *capability.least().expect("windows travel with a time");
                    held.entry(time).or_insert_with(|| ([0, 1].map(|port| capability.delayed(&time, port)), 0)).1 +=
                        windows.len();
                    for window in windows.drain(..) {
                        let (space, priority) = (window.key.space.clone(), window.priority);
                        scheduler.push((window, time), &space, priority, now);
                    }
                });
                let mut segments_session = segments_out.activate();
                let mut dead_session = dead_out.activate();
                let shed = scheduler.shed();
                let queued = scheduler.len() + shed.len();
                for entry in shed {
                    let (window, time) = entry.item;
                    metrics.shed.with_label_values(&[window.priority.as_str()]).inc();
                    let reason = format!(
                        "{} window shed under overload: {queued} windows queued, above scheduling.shed_queue_windows",
                        window.priority.as_str()
                    );
                    dead_session.session(&held[&time].0[1]).give(rejection(&window, Cause::Shed, reason, &metrics));
                    release(&mut held, time);
                }
                match scheduler.step(now, frontiers[0].is_empty()) {
                    Step::Idle => {}
                    Step::Wait(delay) => wakeup.within(delay),
                    Step::Run(n) => {
                        let (windows, times): (Vec<Window>, Vec<u64>) =
                            scheduler.take(n.min(max_batch)).into_iter().map(|e| e.item).unzip();
                        let outcomes = embed_batch(&mut embedder, &windows, &metrics);
                        metrics.count("embed", windows.len(), outcomes.iter().filter(|o| o.is_ok()).count());
                        // Each result goes out at the time of its own window.
                        for (time, outcome) in times.iter().zip(outcomes) {
                            match outcome {
                                Ok(segment) => segments_session.session(&held[time].0[0]).give(segment),
                                Err(letter) => dead_session.session(&held[time].0[1]).give(letter),
                            }
                        }
                        for time in times {
                            release(&mut held, time);
                        }
                        if !scheduler.is_empty() {
                            wakeup.now();
                        }
                    }
                }
                let now_queued = scheduler.len() as i64;
                metrics.queued("embed", now_queued - queued_here);
                queued_here = now_queued;
            }
        });
        (segments, dead)
    }
}

fn release(held: &mut BTreeMap<u64, ([Capability<u64>; 2], usize)>, time: u64) {
    if let Some(entry) = held.get_mut(&time) {
        entry.1 -= 1;
        if entry.1 == 0 {
            held.remove(&time);
        }
    }
}

/// Embeds one batch, one outcome per window in order; when the batch fails, each window is retried alone so one bad
/// window cannot sink the rest.
fn embed_batch(embedder: &mut Embedder, batch: &[Window], metrics: &Metrics) -> Vec<Result<Segment, DeadLetter>> {
    let views: Vec<&[f32]> = batch.iter().map(|w| w.samples.as_slice()).collect();
    metrics.embed_batch.observe(batch.len() as f64);
    let started = Instant::now();
    let embedded = embedder.embed(&views);
    metrics.time("embed", started);
    match embedded {
        Ok(embeddings) => {
            let keep_audio = embedder.keep_audio;
            batch.iter().zip(embeddings).map(|(window, e)| accept(window, e, keep_audio, metrics)).collect()
        }
        Err(_) if batch.len() > 1 => {
            batch.iter().flat_map(|window| embed_batch(embedder, std::slice::from_ref(window), metrics)).collect()
        }
        Err(error) => {
            batch.iter().map(|window| Err(rejection(window, Cause::Model, error.to_string(), metrics))).collect()
        }
    }
}

fn accept(window: &Window, embedding: Vec<f32>, keep_audio: bool, metrics: &Metrics) -> Result<Segment, DeadLetter> {
    if let Some(i) = embedding.iter().position(|x| !x.is_finite()) {
        let reason = format!("the model returned {} at dimension {i}", embedding[i]);
        return Err(rejection(window, Cause::ModelOutput, reason, metrics));
    }
    Ok(Segment {
        key: window.key.clone(),
        coverage: window.coverage,
        origin: window.origin.clone(),
        resumed: window.resumed,
        embedding,
        audio: if keep_audio { window.samples.iter().copied().map(pcm16).collect() } else { Vec::new() },
    })
}

fn rejection(window: &Window, cause: Cause, reason: String, metrics: &Metrics) -> DeadLetter {
    metrics.reject("embed", cause, 1);
    DeadLetter {
        origin: Some(window.origin.clone()),
        key: Some(window.key.sensor.as_bytes().to_vec()),
        headers: Vec::new(),
        payload: Vec::new(),
        reason: format!(
            "window {} of sensor '{}' at sample {}: {reason}",
            window.key.id(),
            window.key.sensor,
            window.key.start
        ),
        cause,
    }
}
