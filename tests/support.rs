//! What the integration tests share: the installed tools, the running broker, isolated scenarios (own topics, group,
//! archive and index) and the `chorus` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chorus_connectors::parquet::{self, ArchivedSegment};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Paths of the tools `scripts/tools.sh` installs.
pub struct Tools {
    pub onnxruntime: PathBuf,
    pub model: PathBuf,
    pub sample: PathBuf,
    pub python: PathBuf,
}

/// The installed tools; a clear failure when they are missing.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = std::env::var_os("CHORUS_TOOLS").map(PathBuf::from).unwrap_or_else(|| root().join(".tools"));
        let tools = Tools {
            onnxruntime: dir.join("onnxruntime-1.32.0/libonnxruntime.so.1.32.0"),
            model: dir.join("models/chorus-standin-v1.onnx"),
            sample: dir.join("sample/birds_10s.wav"),
            python: dir.join("venv/bin/python"),
        };
        for path in [&tools.onnxruntime, &tools.model, &tools.sample, &tools.python] {
            assert!(
                path.exists(),
                "{} is missing: run the tests with scripts/test.sh, which installs it",
                path.display()
            );
        }
        tools
    })
}

/// The broker address; a clear failure when nothing answers there.
pub fn brokers() -> String {
    let brokers = std::env::var("CHORUS_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap_or_default();
    let address = first.parse().unwrap_or_else(|_| panic!("CHORUS_BROKERS {brokers:?} is not host:port"));
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("no broker at {first} ({e}): run the tests with scripts/test.sh, which starts it"));
    brokers
}

/// A name no other test run has used: topics and groups persist in the broker between runs.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t.{prefix}.{}.{nanos:x}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// 2026-05-01T05:00:00Z, where test recordings start.
pub const T0: &str = "2026-05-01T05:00:00Z";
/// [`T0`] in seconds since the epoch.
pub const T0_SECONDS: i64 = 1_777_611_600;

/// An isolated job: its own topics, consumer group, archive and index, in a temporary directory.
pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub audio_topic: String,
    pub segments_topic: String,
    pub dead_letter_topic: String,
    pub labels_topic: String,
    pub group: String,
    pub archive: PathBuf,
    pub brokers: String,
}

impl Scenario {
    /// A scenario from `config/balanced.toml` with `overrides` (`("section.key", value)`) applied.
    pub fn new(name: &str, overrides: &[(&str, toml::Value)]) -> Scenario {
        Scenario::on(&brokers(), name, overrides)
    }

    /// Like [`Scenario::new`], on the broker at `brokers`; archive files every second, so tests see them soon.
    pub fn on(brokers: &str, name: &str, overrides: &[(&str, toml::Value)]) -> Scenario {
        let mut settings = vec![("archive.flush_interval_seconds", 1.0.into())];
        settings.extend(overrides.iter().cloned());
        Scenario::from_profile("balanced.toml", brokers, name, &settings)
    }

    /// A scenario from `config/<profile>` as it stands (paths, topics and group made its own) with `overrides`.
    pub fn from_profile(profile: &str, brokers: &str, name: &str, overrides: &[(&str, toml::Value)]) -> Scenario {
        Scenario::make(profile, brokers, name, overrides, true)
    }

    /// Like [`Scenario::on`], without creating the topics first: for a config the broker is expected to refuse.
    #[allow(dead_code)]
    pub fn config_only(brokers: &str, name: &str, overrides: &[(&str, toml::Value)]) -> Scenario {
        let mut settings = vec![("archive.flush_interval_seconds", 1.0.into())];
        settings.extend(overrides.iter().cloned());
        Scenario::make("balanced.toml", brokers, name, &settings, false)
    }

    fn make(profile: &str, brokers: &str, name: &str, overrides: &[(&str, toml::Value)], topics: bool) -> Scenario {
        let tools = tools();
        let brokers = brokers.to_owned();
        let dir = tempfile::Builder::new().prefix(&format!("chorus-{name}-")).tempdir().unwrap();
        let text = std::fs::read_to_string(root().join("config").join(profile)).unwrap();
        let mut table: toml::Table = text.parse().unwrap();
        let audio_topic = unique(&format!("{name}.audio"));
        let segments_topic = unique(&format!("{name}.segments"));
        let dead_letter_topic = unique(&format!("{name}.dead"));
        let labels_topic = unique(&format!("{name}.labels"));
        let group = unique(name);
        let archive = dir.path().join("archive");
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let mut settings: Vec<(&str, toml::Value)> = vec![
            ("kafka.brokers", brokers.clone().into()),
            ("kafka.audio_topic", audio_topic.clone().into()),
            ("kafka.segments_topic", segments_topic.clone().into()),
            ("kafka.dead_letter_topic", dead_letter_topic.clone().into()),
            ("kafka.labels_topic", labels_topic.clone().into()),
            ("kafka.group_id", group.clone().into()),
            ("model.path", path(&tools.model)),
            ("embed.onnxruntime", path(&tools.onnxruntime)),
            ("index.dir", path(&dir.path().join("index"))),
            ("archive.dir", path(&archive)),
            ("refine.dir", path(&dir.path().join("refined"))),
            ("state_dir", path(&dir.path().join("state"))),
            ("http.listen", "127.0.0.1:0".into()),
        ];
        settings.extend(overrides.iter().cloned());
        for (key, value) in settings {
            let Some((section, field)) = key.split_once('.') else {
                table.insert(key.to_owned(), value);
                continue;
            };
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap()
                .insert(field.to_owned(), value);
        }
        let config = dir.path().join("chorus.toml");
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
        // Third-party producers expect the topics to exist: the broker does not create them on first use.
        let settings = chorus::config::Config::load(&config).unwrap();
        if topics {
            chorus_connectors::kafka::ensure_topics(&settings.kafka).unwrap();
        }
        Scenario { dir, config, audio_topic, segments_topic, dead_letter_topic, labels_topic, group, archive, brokers }
    }

    /// Runs `chorus <args> --config <this scenario>` and returns its output; fails the test when it fails.
    pub fn chorus(&self, args: &[&str]) -> Output {
        let output = self.chorus_unchecked(args);
        assert!(
            output.status.success(),
            "chorus {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `chorus <subcommand> --config <this scenario> <rest>`.
    fn command(&self, args: &[&str]) -> Command {
        let (subcommand, rest) = args.split_first().expect("a subcommand");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
        command.arg(subcommand).arg("--config").arg(&self.config).args(rest);
        command
    }

    /// Runs `chorus`, killing it after three minutes; its output is read as it comes, so a chatty job never blocks.
    pub fn chorus_unchecked(&self, args: &[&str]) -> Output {
        use std::io::Read;
        let mut child = self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).unwrap();
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                let stderr = stderr.join().unwrap();
                panic!("chorus {args:?} did not finish in 180 s:\n{}", String::from_utf8_lossy(&stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }

    /// Starts `chorus <args> --config <this scenario>` in the background; its log goes to [`Scenario::job_log`].
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_numbered(0, args)
    }

    /// Like [`Scenario::spawn`], for one of several processes at once (each with a log of its own).
    pub fn spawn_numbered(&self, n: usize, args: &[&str]) -> std::process::Child {
        let log = std::fs::File::create(self.dir.path().join(format!("job-{n}.log"))).unwrap();
        self.command(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// The logs of the jobs started with [`Scenario::spawn`].
    pub fn job_log(&self) -> String {
        (0..4).filter_map(|n| std::fs::read_to_string(self.dir.path().join(format!("job-{n}.log"))).ok()).collect()
    }

    /// Runs the job until the audio topic is drained and quiet for a second.
    pub fn run_until_idle(&self) -> String {
        String::from_utf8(self.chorus(&["run", "--until-idle", "1"]).stderr).unwrap()
    }

    /// Every archived segment of `space`, sorted by sensor and start time.
    pub fn archived(&self, space: &str, embeddings: bool) -> Vec<ArchivedSegment> {
        let mut rows = Vec::new();
        parquet::read_space(&self.archive, space, embeddings, |row| rows.push(row)).unwrap();
        rows.sort_by(|a, b| (&a.sensor, a.start_micros).cmp(&(&b.sensor, b.start_micros)));
        rows
    }

    /// Runs a Python script from `tests/fixtures` with the pinned interpreter; returns its stdout.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let output =
            Command::new(&tools().python).arg(root().join("tests/fixtures").join(script)).args(args).output().unwrap();
        assert!(output.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// The offsets the job has committed for the audio topic, per partition (partitions without a commit left out).
    pub fn committed(&self) -> std::collections::BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut wanted = TopicPartitionList::new();
        for partition in 0..4 {
            wanted.add_partition(&self.audio_topic, partition);
        }
        let committed = consumer.committed_offsets(wanted, Duration::from_secs(10)).unwrap();
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some((e.partition(), n)),
                _ => None,
            })
            .collect()
    }

    /// Every record of partition 0 of `topic` from its start, leaving out the refinement's (`chorus.record`
    /// header): it waits up to 30 s for `expected` of them, then reads on to the end of the partition, so that a
    /// caller comparing the count with `expected` also sees any extra record.
    pub fn consume(&self, topic: &str, expected: usize) -> Vec<Consumed> {
        self.consume_matching(topic, expected, |m| m.header("chorus.record").is_none())
    }

    /// Like [`Scenario::consume`], keeping the records that pass `keep`.
    pub fn consume_matching(&self, topic: &str, expected: usize, keep: impl Fn(&Consumed) -> bool) -> Vec<Consumed> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        // Where the partition ended once `expected` records were seen (or the wait ran out): everything before it is
        // read too.
        let mut end: Option<i64> = None;
        let mut next = 0;
        loop {
            if end.is_none() && (out.len() >= expected || Instant::now() >= deadline) {
                end = Some(consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap().1);
            }
            if end.is_some_and(|end| next >= end) || Instant::now() >= deadline + Duration::from_secs(30) {
                break;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                next = m.offset() + 1;
                let consumed = Consumed {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if keep(&consumed) {
                    out.push(consumed);
                }
            }
        }
        out
    }
}

/// The counts a `chorus run` prints when it ends (`chorus run: N chunks, N windows, N new segments (N already
/// indexed), N dead letters; N precomputed vectors; committed ...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub chunks: u64,
    pub windows: u64,
    pub new_segments: u64,
    pub already_indexed: u64,
    pub dead_letters: u64,
    /// Vectors of embeddings messages taken (`; N precomputed vectors;`).
    pub vectors: u64,
}

/// The counts of the last `chorus run` summary in `log`; fails the test when there is none.
pub fn run_counts(log: &str) -> RunCounts {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("chorus run: "))
        .unwrap_or_else(|| panic!("no `chorus run:` summary in the log:\n{log}"));
    let counts = line.split(';').next().unwrap_or_default();
    let numbers: Vec<u64> =
        counts.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()).map(|n| n.parse().unwrap()).collect();
    let [chunks, windows, new_segments, already_indexed, dead_letters] = numbers[..] else {
        panic!("unexpected summary: {line}");
    };
    let vectors = line
        .split(';')
        .find_map(|part| part.trim().strip_suffix(" precomputed vectors"))
        .unwrap_or_else(|| panic!("no precomputed vectors in the summary: {line}"))
        .parse()
        .unwrap();
    RunCounts { chunks, windows, new_segments, already_indexed, dead_letters, vectors }
}

/// The value of the sample `series` (name and labels, exactly as exposed) in Prometheus text `metrics`; fails the
/// test when it is absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits up to `timeout` for `condition`, polling every 50 ms; fails the test with `what` when it never holds.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A message read back from a topic.
#[derive(Debug)]
pub struct Consumed {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    /// The last value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The sample recording's samples (32 kHz mono).
pub fn sample_samples() -> Vec<f32> {
    let bytes = std::fs::read(&tools().sample).unwrap();
    chorus_connectors::wav::decode(&bytes, &Default::default()).unwrap().samples
}

/// Deterministic standard-normal noise (xorshift + Box–Muller).
pub fn gaussian_noise(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| ((-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos()) as f32).collect()
}

/// Writes mono samples as a 16-bit PCM WAV file.
pub fn write_wav_i16(path: &Path, sample_rate: u32, samples: &[f32]) {
    let spec =
        hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        writer.write_sample((x.clamp(-1.0, 1.0) * 32_767.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Peak resident memory of process `pid` so far, in bytes (VmHWM).
pub fn peak_rss(pid: u32) -> usize {
    proc_status_bytes(Some(pid), "VmHWM")
}

/// A memory figure of the /proc status of `pid` (this process for `None`) in bytes: `VmRSS`, `VmHWM`, …; 0 when it
/// cannot be read.
pub fn proc_status_bytes(pid: Option<u32>, field: &str) -> usize {
    proc_status_field(pid, field)
        .and_then(|value| value.split_whitespace().next().and_then(|kb| kb.parse::<usize>().ok()))
        .map_or(0, |kb| kb << 10)
}

/// The value of `field` in the /proc status of `pid` (this process for `None`), trimmed; `None` when it cannot be
/// read or the status has no such line (a process that has exited shows no memory lines).
pub fn proc_status_field(pid: Option<u32>, field: &str) -> Option<String> {
    let path = pid.map_or_else(|| "/proc/self/status".to_owned(), |pid| format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .map(|value| value.trim().to_owned())
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// An HTTP GET on 127.0.0.1: the status code and body, or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, &[], b"")
}

/// An HTTP request on 127.0.0.1 with `headers` and `body`: the status code and body, or `None` when nothing
/// answers.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String)> {
    http_with_host(port, method, path, Some("127.0.0.1"), headers, body)
}

/// A broker of the test's own (tansu, sqlite storage, in a temporary directory), for tests that stop it.
pub struct PrivateBroker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Options of its storage engine, as a URL query (`maintenance_interval=1s`).
    storage_options: String,
    /// A SCRAM-SHA-512 user and password clients must authenticate as (`--authentication`), if any.
    user: Option<(String, String)>,
    /// The port it tells clients to connect to, when something (a TLS proxy) stands in front of it.
    advertised: Option<u16>,
}

impl PrivateBroker {
    /// Starts one and waits until it answers.
    pub fn start() -> PrivateBroker {
        PrivateBroker::start_with("")
    }

    /// Starts one whose storage engine takes `options` (a URL query: `maintenance_interval=1s` runs its retention
    /// every second rather than every ten minutes).
    pub fn start_with(options: &str) -> PrivateBroker {
        let mut broker = PrivateBroker {
            port: free_port(),
            dir: tempfile::Builder::new().prefix("chorus-broker-").tempdir().unwrap(),
            child: None,
            storage_options: options.to_owned(),
            user: None,
            advertised: None,
        };
        broker.restart();
        broker
    }

    /// Starts one that requires SASL/SCRAM-SHA-512 authentication as `user` with `password` (created first, while
    /// it still takes anyone), and waits until it answers that user.
    #[allow(dead_code)]
    pub fn start_authenticated(user: &str, password: &str) -> PrivateBroker {
        let mut broker = PrivateBroker::start();
        let tools = std::env::var_os("CHORUS_TOOLS").map(PathBuf::from).unwrap_or_else(|| root().join(".tools"));
        let status = Command::new(tools.join("tansu-0.6.0/bin/tansu"))
            .args(["user", "create", "--broker", &format!("tcp://{}", broker.address()), user, password])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu user create failed ({status})");
        broker.stop();
        broker.user = Some((user.to_owned(), password.to_owned()));
        broker.restart();
        broker
    }

    /// Like [`PrivateBroker::start_authenticated`], telling clients to connect to `port` on 127.0.0.1, where a TLS
    /// proxy stands in front of it.
    #[allow(dead_code)]
    pub fn start_authenticated_behind(user: &str, password: &str, port: u16) -> PrivateBroker {
        let mut broker = PrivateBroker::start_authenticated(user, password);
        broker.stop();
        broker.advertised = Some(port);
        broker.restart();
        broker
    }

    /// A client config for this broker, authenticated when it requires it.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        if let Some((user, password)) = &self.user {
            config
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        config
    }

    /// Its sqlite database.
    #[allow(dead_code)]
    pub fn database(&self) -> PathBuf {
        self.dir.path().join("tansu.db")
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id while it runs (the soak bench reads its CPU time).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Stops it (SIGTERM), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id());
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and data, and waits until it answers.
    pub fn restart(&mut self) {
        let tools = std::env::var_os("CHORUS_TOOLS").map(PathBuf::from).unwrap_or_else(|| root().join(".tools"));
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let log = std::fs::File::create(self.dir.path().join("broker.log")).unwrap();
        let child = Command::new(tools.join("tansu-0.6.0/bin/tansu"))
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", &format!("sqlite://tansu.db{}", query(&self.storage_options))])
            .args(self.user.as_ref().map(|_| "--authentication"))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let config = self.client();
        wait_for("the private broker", Duration::from_secs(30), || {
            let client: Result<BaseConsumer, _> = config.create();
            client.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(1)).is_ok())
        });
        // The index the bundled broker's fetches need, as scripts/broker.sh gives it.
        let status = Command::new(root().join("scripts/broker.sh"))
            .args(["index", &self.dir.path().join("tansu.db").to_string_lossy()])
            .status()
            .unwrap();
        assert!(status.success(), "scripts/broker.sh index failed ({status})");
    }
}

fn query(options: &str) -> String {
    if options.is_empty() { String::new() } else { format!("?{options}") }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes mono float32 samples as a WAV file.
pub fn write_wav(path: &Path, sample_rate: u32, samples: &[f32]) {
    std::fs::write(path, chorus_connectors::wav::encode_f32(sample_rate, samples)).unwrap();
}

/// Checks Prometheus text exposition with Prometheus' own linter, `promtool check metrics` (scripts/tools.sh
/// installs it); panics with what it found.
pub fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/tools.sh promtool installs it)");
    child.stdin.take().expect("stdin is piped").write_all(metrics.as_bytes()).expect("promtool reads the metrics");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the metrics ---\n{metrics}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `request` to 127.0.0.1:`port` exactly as given (request line, headers, blank line and body: nothing is
/// added, not even `Host`): the status code and body, or `None` when nothing answers. For requests [`http`] cannot
/// send: another `Host`, none, or two.
pub fn http_raw(port: u16, request: &[u8]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    // A server may answer before reading all of a large body.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Like [`http`], with `Host: <host>` instead of `Host: 127.0.0.1`, or no `Host` header at all when `host` is `None`.
pub fn http_with_host(
    port: u16,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(host) = host {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(port, &bytes)
}

/// A message as any Kafka client may produce it: the key, value, headers, partition and timestamp of its choosing.
pub struct RawChunk {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None`: the client's partitioner picks.
    pub partition: Option<i32>,
    /// `None`: the client stamps the time of sending.
    pub timestamp_ms: Option<i64>,
}

impl RawChunk {
    /// A chunk of `sensor` starting at `captured_at` (RFC 3339), with `value` as its WAV file.
    pub fn new(sensor: &str, captured_at: &str, value: Vec<u8>) -> RawChunk {
        RawChunk {
            key: sensor.to_owned(),
            value,
            headers: vec![("captured_at".to_owned(), captured_at.as_bytes().to_vec())],
            partition: None,
            timestamp_ms: None,
        }
    }
}

/// RFC 3339 (UTC, nanoseconds) of `nanos` after [`T0`].
pub fn t0_plus(nanos: i64) -> String {
    chorus_operators::record::rfc3339(T0_SECONDS * 1_000_000_000 + nanos)
}

/// `samples` (interleaved when `channels` > 1) as a 16-bit PCM WAV file in memory.
pub fn wav_i16(sample_rate: u32, channels: u16, samples: &[f32]) -> Vec<u8> {
    wav_pcm(sample_rate, channels, 16, samples)
}

/// `samples` (interleaved when `channels` > 1) as an 8- or 16-bit PCM WAV file in memory.
pub fn wav_pcm(sample_rate: u32, channels: u16, bits: u16, samples: &[f32]) -> Vec<u8> {
    let spec = hound::WavSpec { channels, sample_rate, bits_per_sample: bits, sample_format: hound::SampleFormat::Int };
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
    let full_scale = f32::from((1u16 << (bits - 1)) - 1);
    for &x in samples {
        let value = (x.clamp(-1.0, 1.0) * full_scale) as i16;
        if bits == 8 { writer.write_sample(value as i8).unwrap() } else { writer.write_sample(value).unwrap() }
    }
    writer.finalize().unwrap();
    bytes.into_inner()
}

impl Scenario {
    /// Produces `chunks` to the audio topic in order and waits until the broker has them all.
    pub fn produce_raw(&self, chunks: &[RawChunk]) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("message.max.bytes", "2000000")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for chunk in chunks {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &chunk.headers {
                headers = headers.insert(Header { key, value: Some(value.as_slice()) });
            }
            let mut record = BaseRecord::to(&self.audio_topic)
                .key(chunk.key.as_str())
                .payload(chunk.value.as_slice())
                .headers(headers);
            if let Some(partition) = chunk.partition {
                record = record.partition(partition);
            }
            if let Some(ms) = chunk.timestamp_ms {
                record = record.timestamp(ms);
            }
            let mut record = Some(record);
            while let Some(r) = record.take() {
                if let Err((error, r)) = producer.send(r) {
                    assert!(
                        matches!(
                            error,
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "{error}"
                    );
                    producer.poll(Duration::from_millis(10));
                    record = Some(r);
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    /// Sets `key` (`section.field`) of this scenario's config file to `value`.
    pub fn set(&self, key: &str, value: toml::Value) {
        let mut table: toml::Table = std::fs::read_to_string(&self.config).unwrap().parse().unwrap();
        let (section, field) = key.split_once('.').unwrap_or(("", key));
        let target = if section.is_empty() {
            &mut table
        } else {
            table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().unwrap()
        };
        target.insert(field.to_owned(), value);
        std::fs::write(&self.config, toml::to_string(&table).unwrap()).unwrap();
    }

    /// Commits `offsets` of the audio topic for this scenario's group, as a job would.
    pub fn commit(&self, offsets: &[(i32, i64)]) {
        let config = chorus::config::Config::load(&self.config).unwrap();
        chorus_connectors::kafka::commit_offsets(&config.kafka, &offsets.iter().copied().collect()).unwrap();
    }
}
