//! The shipped profiles, and how bad config files are reported.

use chorus::config::Config;

use crate::support::root;

#[test]
fn r2_every_shipped_profile_parses_and_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.model.window, 160_000, "{}: the stand-in model takes 5 s at 32 kHz", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "config/ should hold at least balanced.toml and low-latency.toml");
}

#[test]
fn r2_an_unknown_key_is_an_error_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(root().join("config/balanced.toml")).unwrap();
    std::fs::write(&path, text.replace("hop_seconds = 5.0", "hop_seconds = 5.0\nhop_secs = 2.5")).unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.starts_with(&path.display().to_string()), "{error}");
    assert!(error.contains("unknown field `hop_secs`"), "{error}");

    // The command line reports the same, and exits with failure.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["run", "--config", &path.display().to_string()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `hop_secs`"));
}
