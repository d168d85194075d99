//! A production Kafka: the job end to end against the bundled broker requiring SASL/SCRAM authentication, over
//! plaintext and over TLS (stunnel in front of the broker, with certificates the test makes); brokers that refuse
//! the client named at once and in `/readyz`; the password kept out of the job's log, metrics and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{PrivateBroker, Scenario, T0, free_port, http, http_get, terminate, tools, wait_for};

const PASSWORD: &str = "wren-song-7f3a9c";

#[test]
fn r21_the_job_runs_end_to_end_over_sasl_scram_and_never_shows_the_password() {
    let broker = PrivateBroker::start_authenticated("chorus", PASSWORD);
    // The broker refuses a client that does not authenticate, and one with the wrong password.
    for (protocol, password) in [("plaintext", ""), ("sasl_plaintext", "not-the-password")] {
        let mut client = broker.client();
        client.set("security.protocol", protocol).set("log_level", "0");
        if protocol == "plaintext" {
            client.remove("sasl.mechanism").remove("sasl.username").remove("sasl.password");
        } else {
            client.set("sasl.password", password);
        }
        let consumer: rdkafka::consumer::BaseConsumer = client.create().unwrap();
        let answered = rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(3));
        assert!(answered.is_err(), "a {protocol} client with password {password:?} was let in");
    }
    let port = free_port();
    let s = Scenario::on(
        &broker.address(),
        "r21-sasl",
        &[
            ("kafka.security_protocol", "sasl_plaintext".into()),
            ("kafka.sasl_mechanism", "SCRAM-SHA-512".into()),
            ("kafka.username", "chorus".into()),
            ("kafka.password", PASSWORD.into()),
            ("http.listen", format!("127.0.0.1:{port}").into()),
        ],
    );
    let sample = tools().sample.display().to_string();
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample]);
    let mut job = s.spawn(&["run"]);
    wait_for("the job to archive the sample", Duration::from_secs(120), || s.archived("default", false).len() == 2);
    let (status, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
    // A search by an archived segment answers from the index the job left.
    let id = s.archived("default", false)[0].id.to_string();
    let answers: serde_json::Value =
        serde_json::from_slice(&s.chorus(&["query", "--segment", &id, "-k", "1", "--json"]).stdout).unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 1, "{answers}");
    let log = s.job_log();
    assert!(log.contains("sasl_plaintext"), "the log says how the job connects:\n{log}");
    for (what, text) in [("log", &log), ("metrics", &metrics)] {
        assert!(!text.contains(PASSWORD), "the password is in the job's {what}");
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI in `dir` under `name`: the CA's and
/// the server's certificate and the server's key.
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let (ca, ca_key, cert, key, csr, ext) =
        (path("ca.pem"), path("ca.key"), path("server.pem"), path("server.key"), path("server.csr"), path("ext.cnf"));
    let s = |p: &PathBuf| p.display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}-ca"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", &s(&key), "-out", &s(&csr)]);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, cert, key)
}

/// stunnel serving TLS on `port` (with `cert` and `key`) in front of the plaintext listener on `target`, until dropped.
struct Tls(std::process::Child);

impl Tls {
    fn start(dir: &Path, port: u16, target: u16, cert: &Path, key: &Path) -> Tls {
        let config = dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\n\
                 key = {}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let binary = if Command::new("stunnel4").arg("-version").output().is_ok() { "stunnel4" } else { "stunnel" };
        let child = Command::new(binary)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("stunnel-{port}.log"))).unwrap())
            .spawn()
            .unwrap();
        wait_for("stunnel", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Tls(child)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The settings of a chorus config for SASL/SCRAM over TLS with `password` and the CA file `ca`.
fn sasl_ssl(password: &str, ca: &Path) -> Vec<(&'static str, toml::Value)> {
    vec![
        ("kafka.security_protocol", "sasl_ssl".into()),
        ("kafka.sasl_mechanism", "SCRAM-SHA-512".into()),
        ("kafka.username", "chorus".into()),
        ("kafka.password", password.into()),
        ("kafka.ssl_ca_location", ca.display().to_string().into()),
    ]
}

#[test]
fn r21_the_job_runs_over_sasl_ssl_and_a_refusing_broker_is_named_at_once_and_in_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "broker");
    let (other_ca, other_cert, other_key) = certificates(dir.path(), "other");
    let tls_port = free_port();
    let broker = PrivateBroker::start_authenticated_behind("chorus", PASSWORD, tls_port);
    let tls = Tls::start(dir.path(), tls_port, broker.port, &cert, &key);
    let address = format!("127.0.0.1:{tls_port}");

    // End to end over TLS with SASL/SCRAM: produce, archive, search.
    let api = free_port();
    let mut settings = sasl_ssl(PASSWORD, &ca);
    settings.push(("http.listen", format!("127.0.0.1:{api}").into()));
    let s = Scenario::on(&address, "r21-tls", &settings);
    let sample = tools().sample.display().to_string();
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample]);
    let mut job = s.spawn(&["run"]);
    wait_for("the job to archive the sample", Duration::from_secs(120), || s.archived("default", false).len() == 2);
    let ready = || http_get(api, "/readyz").unwrap();
    assert_eq!(ready().0, 200, "{}", ready().1);
    // A label given through the API goes to the labels topic and comes back through the labels consumer.
    let labelled = s.archived("default", false)[0].id.to_string();
    let body = serde_json::json!({ "labels": [{ "segment_id": labelled, "label": "Turdus merula" }] }).to_string();
    let (status, answer) =
        http(api, "POST", "/v1/labels", &[("Content-Type", "application/json")], body.as_bytes()).unwrap();
    assert_eq!(status, 202, "{answer}");
    wait_for("the label to come back over sasl_ssl", Duration::from_secs(30), || {
        let (_, segment) = http(api, "GET", &format!("/v1/segments/{labelled}"), &[], b"").unwrap();
        serde_json::from_str::<serde_json::Value>(&segment).unwrap()["label"] == "Turdus merula"
    });
    // The TLS listener now shows a certificate of a CA the job does not trust: /readyz says why while it lasts.
    drop(tls);
    let tls = Tls::start(dir.path(), tls_port, broker.port, &other_cert, &other_key);
    // (It may first say that nothing listens, in the moment between the two.)
    wait_for("/readyz to say why", Duration::from_secs(30), || {
        let (status, reason) = ready();
        status == 503 && reason.contains("certificate verify failed")
    });
    let (_, reason) = ready();
    assert!(reason.contains(&address) && reason.contains("sasl_ssl"), "{reason}");
    drop(tls);
    let _tls = Tls::start(dir.path(), tls_port, broker.port, &cert, &key);
    wait_for("/readyz to turn 200 again", Duration::from_secs(30), || ready().0 == 200);
    let (_, metrics) = http_get(api, "/metrics").unwrap();
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
    for (what, text) in [("log", s.job_log()), ("metrics", metrics), ("readyz", reason)] {
        assert!(!text.contains(PASSWORD), "the password is in the job's {what}");
    }
    let archived = s.archived("default", false);
    assert_eq!(archived.len(), 2);
    let answers: serde_json::Value = serde_json::from_slice(
        &s.chorus(&["query", "--segment", &archived[0].id.to_string(), "-k", "1", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 1, "{answers}");

    // Refused at once, saying by whom, how and what.
    let refused = |name: &str, settings: Vec<(&'static str, toml::Value)>, what: &[&str]| {
        let mut settings = settings;
        settings.push(("kafka.create_topics", false.into()));
        let wrong = Scenario::config_only(&address, name, &settings);
        let started = std::time::Instant::now();
        let output = wrong.chorus_unchecked(&["run", "--until-idle", "1"]);
        let took = started.elapsed();
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "{name}: the job ran:\n{message}");
        assert!(took < Duration::from_secs(20), "{name}: refused after {took:?}:\n{message}");
        assert!(message.contains(&address), "{name}: the broker is not named:\n{message}");
        for needle in what {
            assert!(message.to_lowercase().contains(&needle.to_lowercase()), "{name}: no '{needle}' in:\n{message}");
        }
        assert!(!message.contains(PASSWORD), "{name}: the password shows");
        eprintln!("{name}, refused in {took:.1?}: {}", message.trim());
    };
    refused("r21-password", sasl_ssl("not-the-password", &ca), &["refused", "sasl_ssl", "authentication"]);
    refused("r21-ca", sasl_ssl(PASSWORD, &other_ca), &["refused", "sasl_ssl", "certificate verify failed"]);
    refused("r21-plain", vec![], &["refused", "plaintext"]);
}
