//! Graph refinement in a running job: labels given through the API spread to segments that sound alike, a label
//! taken away is taken away downstream, clusters form, refined searches answer, and the refinements reach the
//! Parquet dataset (read by DuckDB) and the segments topic; bad label messages are dead-lettered. With a horizon, the
//! refinement holds only a space's most recent segments, and the retired ones keep showing their last label and
//! cluster.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};

use crate::support::{Scenario, T0, free_port, http, http_get, metric, t0_plus, terminate, tools, wait_for};

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (status, body) =
        http(port, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes()).unwrap();
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}")))
}

fn segment(port: u16, id: &str) -> Value {
    let (_, body) = http(port, "GET", &format!("/v1/segments/{id}"), &[], b"").unwrap();
    serde_json::from_str(&body).unwrap()
}

/// The sample on three poles at T0, then the job: its process and the six archived segments, by sensor and time.
fn three_poles(s: &Scenario) -> (std::process::Child, Vec<chorus_connectors::parquet::ArchivedSegment>) {
    let sample = tools().sample.display().to_string();
    for sensor in ["pole-1", "pole-2", "pole-3"] {
        s.chorus(&["produce", "--sensor", sensor, "--start", T0, &sample]);
    }
    let job = s.spawn(&["run"]);
    wait_for("three sensors' segments to be archived", Duration::from_secs(90), || {
        s.archived("default", false).len() == 6
    });
    (job, s.archived("default", false))
}

#[test]
fn r5_labels_spread_retract_and_reach_the_archive_and_topic_and_clusters_form() {
    let port = free_port();
    let s = Scenario::new(
        "r5-refine",
        &[
            ("http.listen", format!("127.0.0.1:{port}").into()),
            ("refine.round_ms", 100.into()),
            // Copies of one window are ~0 apart; the sample's two windows are closer than the default threshold.
            ("refine.cluster_max_distance", 0.001.into()),
        ],
    );
    // A label message without a segment id as its key, before the job starts: it is dead-lettered.
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    producer.send(BaseRecord::to(&s.labels_topic).key("not-a-segment").payload("owl")).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let (mut job, archived) = three_poles(&s);
    let id = |sensor: &str, i: usize| archived.iter().filter(|r| r.sensor == sensor).nth(i).unwrap().id.to_string();
    let (first, twin, other) = (id("pole-1", 0), id("pole-2", 0), id("pole-1", 1));

    // The same audio on three poles: each window's three copies are mutual nearest neighbours, one cluster.
    wait_for("clusters", Duration::from_secs(30), || segment(port, &twin)["cluster"].is_string());
    assert_eq!(segment(port, &twin)["cluster"], segment(port, &first)["cluster"]);
    assert_eq!(segment(port, &id("pole-3", 0))["cluster"], segment(port, &first)["cluster"]);
    assert_ne!(segment(port, &other)["cluster"], segment(port, &first)["cluster"]);

    // Labels are checked whole before any is taken.
    let refusals = [
        (json!({ "labels": [{ "segment_id": "xyz", "label": "owl" }] }), 400, "16 hex digits"),
        (json!({ "labels": [{ "segment_id": "00000000000000ff", "label": "owl" }] }), 404, "not indexed"),
        (json!({ "labels": [{ "segment_id": first, "label": " " }] }), 400, "empty"),
        (json!({ "label": "owl" }), 400, "unknown field"),
    ];
    for (body, want, says) in refusals {
        let (status, answer) = post(port, "/v1/labels", &body);
        assert_eq!(status, want, "{body} → {answer}");
        assert!(answer["error"]["reason"].as_str().unwrap().contains(says), "{body} → {answer}");
    }

    // Labels are JSON: a form or text body (what a page elsewhere could send unasked) is refused.
    let (status, _) = http(port, "POST", "/v1/labels", &[("Content-Type", "text/plain")], b"{}").unwrap();
    assert_eq!(status, 415);

    // One label on pole-1's first window spreads to the same window on the other poles.
    let (status, answer) =
        post(port, "/v1/labels", &json!({ "labels": [{ "segment_id": first, "label": "Turdus merula" }] }));
    assert_eq!((status, &answer["accepted"]), (202, &json!(1)), "{answer}");
    wait_for("the label to reach pole-2", Duration::from_secs(30), || segment(port, &twin)["label"] == "Turdus merula");
    let score = segment(port, &twin)["label_score"].as_f64().unwrap();
    assert!(score > 0.0 && score <= 1.0, "{score}");
    // Searches carry labels; a refined search answers too.
    let (status, answer) = post(port, "/v1/search", &json!({ "segment_id": first, "k": 2 }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["queries"][0]["hits"][0]["label"], "Turdus merula", "{answer}");
    let (status, refined) = post(port, "/v1/search", &json!({ "segment_id": first, "k": 2, "refined": true }));
    assert_eq!(status, 200, "{refined}");
    let hits = refined["queries"][0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{refined}");
    assert!(
        hits.iter().all(|h| h["segment_id"] != first.as_str() && h["distance"].as_f64().unwrap() < 1e-3),
        "{refined}"
    );

    // `chorus archive --label` finds the copies the label reached once the refinements dataset holds their rows.
    let labelled = || -> Vec<String> {
        let output = s.chorus(&["archive", "--label", "Turdus merula", "--format", "json"]);
        let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
        rows.as_array().unwrap().iter().map(|r| r["segment_id"].as_str().unwrap().to_owned()).collect()
    };
    wait_for("the labelled rows in the refinements dataset", Duration::from_secs(30), || labelled().contains(&twin));
    let found = labelled();
    assert!(found.contains(&first), "{found:?}");
    for id in &found {
        assert_eq!(segment(port, id)["label"], "Turdus merula", "{id} is listed with the label");
    }

    // Taken away, it is gone everywhere it had spread.
    let (status, _) = post(port, "/v1/labels", &json!({ "labels": [{ "segment_id": first, "label": null }] }));
    assert_eq!(status, 202);
    wait_for("the label to be retracted", Duration::from_secs(30), || {
        segment(port, &twin).get("label").is_none() && segment(port, &first).get("label").is_none()
    });
    let (_, metrics) = crate::support::http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("chorus_refine_update_seconds_count"), "{metrics}");
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());

    // The refinements dataset: the latest row per segment has no label, an earlier one had it; every segment has a
    // cluster and a refined embedding of the model's size.
    let refined_dir = s.dir.path().join("refined");
    let seen: Value =
        serde_json::from_str(&s.python("read_refinements.py", &[&refined_dir.display().to_string()])).unwrap();
    let latest = seen["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 6, "{seen}");
    assert!(latest.iter().all(|r| r["label"].is_null() && r["cluster"].is_string()), "{seen}");
    assert!(latest.iter().all(|r| r["refined_bytes"] == json!(1536)), "{seen}");
    assert!(seen["labelled_rows"].as_u64().unwrap() >= 3, "{seen}");
    assert!(labelled().is_empty(), "the latest rows carry no label");

    // The segments topic carries the same changes, keyed by segment id.
    let records = s.consume_matching(&s.segments_topic, 12, |m| m.header("chorus.record") == Some("refinement"));
    let labelled: Vec<Value> = records
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        .filter(|r| r["label"].is_string())
        .collect();
    assert!(labelled.iter().any(|r| r["segment_id"] == twin.as_str() && r["label"] == "Turdus merula"), "{labelled:?}");

    // The bad label message is in the dead-letter topic with its reason.
    let letters = s.consume(&s.dead_letter_topic, 1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("chorus.cause"), Some("label_key"), "{:?}", letters[0].headers);

    // The graph was saved: a restart resumes it instead of searching every segment again.
    let log = s.run_until_idle();
    let restored: Vec<&str> =
        log.split("restored=").skip(1).map(|rest| rest.split_whitespace().next().unwrap()).collect();
    assert_eq!(restored, ["6"], "{log}");
}

/// `chorus archive --label <label>` as (segment id, label, cluster) rows.
fn listed(s: &Scenario, label: &str) -> Vec<(String, Value, Value)> {
    let output = s.chorus(&["archive", "--label", label, "--format", "json"]);
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["segment_id"].as_str().unwrap().to_owned(), r["label"].clone(), r["cluster"].clone()))
        .collect()
}

/// A refinement metric of the default space; 0 before it has a sample.
fn refine_metric(port: u16, name: &str) -> f64 {
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    let series = format!("{name}{{space=\"default\"}}");
    if metrics.lines().any(|l| l.starts_with(&format!("{series} "))) { metric(&metrics, &series) } else { 0.0 }
}

#[test]
fn r15_the_refinement_holds_its_horizon_and_retired_segments_keep_their_label_and_cluster() {
    let port = free_port();
    let s = Scenario::new(
        "r15-horizon",
        &[
            ("http.listen", format!("127.0.0.1:{port}").into()),
            ("refine.round_ms", 100.into()),
            ("refine.cluster_max_distance", 0.001.into()),
            ("refine.horizon_segments", 6.into()),
        ],
    );
    let (mut job, archived) = three_poles(&s);
    let id = |sensor: &str, i: usize| archived.iter().filter(|r| r.sensor == sensor).nth(i).unwrap().id.to_string();
    let (first, twin, later) = (id("pole-1", 0), id("pole-2", 0), id("pole-1", 1));
    let later_twin = id("pole-2", 1);
    wait_for("clusters", Duration::from_secs(30), || segment(port, &later)["cluster"].is_string());
    let (status, _) =
        post(port, "/v1/labels", &json!({ "labels": [{ "segment_id": first, "label": "Turdus merula" }] }));
    assert_eq!(status, 202);
    wait_for("the label to reach pole-2", Duration::from_secs(30), || segment(port, &twin)["label"] == "Turdus merula");
    assert_eq!(refine_metric(port, "chorus_refine_graph_nodes"), 6.0);

    // Six segments a minute later on three more poles: they are the six most recent, and the first six retire.
    let minute_later = t0_plus(60_000_000_000);
    let sample = tools().sample.display().to_string();
    for sensor in ["pole-4", "pole-5", "pole-6"] {
        s.chorus(&["produce", "--sensor", sensor, "--start", &minute_later, &sample]);
    }
    wait_for("the first six to retire", Duration::from_secs(60), || {
        refine_metric(port, "chorus_refine_retired_total") == 6.0
    });
    // (a) The refinement holds exactly its horizon.
    assert_eq!(refine_metric(port, "chorus_refine_graph_nodes"), 6.0);
    // The archive writes its files on its own schedule, after the index.
    wait_for("the six newer segments to be archived", Duration::from_secs(60), || {
        s.archived("default", false).len() == 12
    });

    // (b) A retired segment shows its last label and cluster in the API, the same as its latest row in the
    // refinements dataset, which `chorus archive --label` lists.
    let shown = segment(port, &twin);
    assert_eq!(shown["label"], "Turdus merula", "{shown}");
    assert!(shown["cluster"].is_string(), "{shown}");
    let rows = listed(&s, "Turdus merula");
    let row = rows.iter().find(|(id, _, _)| *id == twin).unwrap_or_else(|| panic!("{twin} not in {rows:?}"));
    assert_eq!((&row.1, &row.2), (&shown["label"], &shown["cluster"]), "{rows:?}");
    assert!(rows.iter().any(|(id, _, _)| *id == first), "{rows:?}");
    // The live segments no longer carry a label: its only seed retired with its segment.
    let live: Vec<String> = s
        .archived("default", false)
        .iter()
        .filter(|r| ["pole-4", "pole-5", "pole-6"].contains(&r.sensor.as_str()))
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(live.len(), 6);
    wait_for("the spread label to leave the live segments", Duration::from_secs(30), || {
        live.iter().all(|id| segment(port, id).get("label").is_none())
    });

    // (c) A label given to a retired segment shows on it with a share of 1 and its cluster kept, reaches the dataset,
    // and does not spread: the segment stays retired, its twins (retired and live) get nothing.
    let cluster_before = segment(port, &later)["cluster"].clone();
    assert!(cluster_before.is_string());
    let (status, _) = post(port, "/v1/labels", &json!({ "labels": [{ "segment_id": later, "label": "Parus major" }] }));
    assert_eq!(status, 202);
    wait_for("the label on the retired segment", Duration::from_secs(30), || {
        segment(port, &later)["label"] == "Parus major"
    });
    let shown = segment(port, &later);
    assert_eq!(shown["label_score"].as_f64(), Some(1.0), "{shown}");
    assert_eq!(shown["cluster"], cluster_before, "{shown}");
    wait_for("its row in the refinements dataset", Duration::from_secs(30), || {
        listed(&s, "Parus major").iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>() == [later.clone()]
    });
    std::thread::sleep(Duration::from_secs(1));
    // (It may carry the label that spread to it before it retired, never the new one.)
    assert_ne!(segment(port, &later_twin)["label"], "Parus major", "{}", segment(port, &later_twin));
    assert!(live.iter().all(|id| segment(port, id).get("label").is_none()));
    assert_eq!(refine_metric(port, "chorus_refine_graph_nodes"), 6.0);
    assert_eq!(refine_metric(port, "chorus_refine_retired_total"), 6.0);
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());

    // A restart holds the same six: the saved graph's segments are the six most recent.
    let log = s.run_until_idle();
    let restored: Vec<&str> =
        log.split("restored=").skip(1).map(|rest| rest.split_whitespace().next().unwrap()).collect();
    assert_eq!(restored, ["6"], "{log}");
}
