//! Compaction of the archive and the refinements dataset (see `chorus_connectors::parquet::compact_dataset`): the
//! job's background rounds, and `chorus compact` for an archive without a job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chorus_connectors::parquet::{self, Compaction, Merged};

use crate::Error;
use crate::config::Config;

/// The datasets compaction keeps: the archive, then the refinements dataset.
fn datasets(config: &Config) -> [(&'static str, &std::path::Path); 2] {
    [("archive", config.archive.dir.as_path()), ("refinements", config.refine.dir.as_path())]
}

/// One round over both datasets: every day partition [`parquet::choose`] picks is merged. `layout` also rewrites
/// files of earlier builds. `each` hears of every merge with its dataset's name.
pub fn round(
    config: &Config,
    compaction: &Compaction,
    layout: bool,
    stop: &AtomicBool,
    each: &mut dyn FnMut(&'static str, &Merged),
) -> Result<Vec<Merged>, Error> {
    let today = chrono::Utc::now().date_naive();
    let mut merged = Vec::new();
    for (dataset, root) in datasets(config) {
        merged.extend(parquet::compact_dataset(root, compaction, today, layout, stop, &mut |m| each(dataset, m))?);
    }
    Ok(merged)
}

/// Compacts an archive no job runs on (`chorus compact`): every day before today is closed, so it ends as one file
/// (two with late rows); today's partition merges by size tiers; files of earlier builds are rewritten. Refuses to run
/// while a job runs on the archive.
pub fn compact_offline(config: &Config, each: &mut dyn FnMut(&'static str, &Merged)) -> Result<Vec<Merged>, Error> {
    let _locks = crate::locks::lock_all(config)?;
    let compaction = Compaction { close_after: Duration::ZERO, ..config.archive.compaction.clone() };
    round(config, &compaction, true, &AtomicBool::new(false), each)
}

/// The job's compaction: a round every `archive.compaction.interval_seconds` on a thread of its own, until dropped.
pub struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the rounds, the first one interval from now; `None` when the config turns compaction off.
    pub fn start(config: &Config) -> Option<Background> {
        let interval = config.archive.compaction_interval?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || {
                // The merges take the cores only when ingestion leaves them idle.
                if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
                    tracing::debug!(%error, "The compaction thread keeps its priority.");
                }
                let (lock, wake) = &*stopped;
                loop {
                    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let (guard, _) = wake.wait_timeout_while(guard, interval, |stop| !*stop).unwrap_or_else(|p| p.into_inner());
                    if *guard {
                        return;
                    }
                    drop(guard);
                    let logged = &mut |dataset: &'static str, m: &Merged| log_merge(dataset, m);
                    if let Err(error) = round(&config, &config.archive.compaction, false, &cancelled, logged) {
                        if cancelled.load(Ordering::Relaxed) {
                            return;
                        }
                        tracing::warn!(%error, "A compaction round failed; the files stay as they are and the next round tries again.");
                    }
                }
            })
            .expect("a thread for compaction");
        Some(Background { stop, cancel, thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn log_merge(dataset: &'static str, m: &Merged) {
    tracing::info!(
        dataset,
        space = %m.space,
        date = %m.date,
        files_in = m.files_in,
        files_out = m.files_out,
        rows = m.rows,
        bytes_in = m.bytes_in,
        bytes_out = m.bytes_out,
        files_now = m.files_after,
        "Compacted a day partition."
    );
}
