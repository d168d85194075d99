//! The job lock: one job per archive (a second would index and archive every segment twice), and `chorus prune`
//! holds every process's lock so that it never races a running job.

use crate::Error;
use crate::config::Config;

/// Holds the archive for this job: a second job on the same archive would index and archive every segment twice.
pub fn lock(config: &Config, process: usize) -> Result<std::fs::File, Error> {
    let name = if process == 0 { ".chorus-job.lock".to_owned() } else { format!(".chorus-job-{process}.lock") };
    lock_file(config, &name)
}

/// Holds the archive against every job: the lock of process 0 and of any other process that ever ran on it.
pub fn lock_all(config: &Config) -> Result<Vec<std::fs::File>, Error> {
    let mut locks = vec![lock_file(config, ".chorus-job.lock")?];
    let mut others: Vec<String> = std::fs::read_dir(&config.archive.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(".chorus-job-") && n.ends_with(".lock"))
        .collect();
    others.sort();
    for name in others {
        locks.push(lock_file(config, &name)?);
    }
    Ok(locks)
}

fn lock_file(config: &Config, name: &str) -> Result<std::fs::File, Error> {
    let failed = |message: String| Error::Job(format!("{}: {message}", config.archive.dir.display()));
    std::fs::create_dir_all(&config.archive.dir).map_err(|e| failed(format!("cannot create the archive: {e}")))?;
    let path = config.archive.dir.join(name);
    let file = std::fs::File::create(&path).map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(failed(
            "another chorus job is running on this archive; stop it first (to run on several cores or machines, \
             give one job more workers)"
                .into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(format!("cannot lock {}: {e}", path.display()))),
    }
}
