//! A production Kafka: the job end to end against the bundled broker requiring SASL/SCRAM authentication, with the
//! password kept out of the job's log and metrics.

use std::time::Duration;

use crate::support::{PrivateBroker, Scenario, T0, free_port, http_get, terminate, tools, wait_for};

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
