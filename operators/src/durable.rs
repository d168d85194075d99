//! Files that survive a crash whole: the state chorus keeps between runs (savepoints, the index's manifests, the
//! refinement's graph) is replaced by one mechanism, so that after a kill or a power cut a file holds either its
//! previous content or all of its new content.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to a new file at `path` and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably: the bytes go to a temporary file beside it, which is synced,
/// renamed over `path`, and the directory is synced so that the rename itself survives a crash. The temporary file
/// is removed when a step fails.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_many(&[(path, bytes)]).pop().expect("one outcome per file")
}

/// Replaces each `(path, bytes)` as [`replace`] does, together: every temporary file is written, then each is
/// synced, renamed, and each directory synced once. On a journaling file system the syncs of files written in one go
/// share a journal commit, so a batch costs the disk about as much as one file, not two commits a file. One outcome
/// per file, in order; a file whose step failed keeps its old content and leaves no temporary file.
pub fn replace_many(files: &[(&Path, &[u8])]) -> Vec<io::Result<()>> {
    let mut written: Vec<io::Result<(PathBuf, fs::File)>> = files
        .iter()
        .map(|(path, bytes)| {
            let tmp = temporary(path);
            let file = fs::File::create(&tmp).and_then(|mut file| file.write_all(bytes).map(|()| file));
            if file.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            Ok((tmp, file?))
        })
        .collect();
    for outcome in &mut written {
        if let Ok((tmp, file)) = outcome
            && let Err(error) = file.sync_all()
        {
            let _ = fs::remove_file(&*tmp);
            *outcome = Err(error);
        }
    }
    let mut renamed: Vec<io::Result<()>> = written
        .into_iter()
        .zip(files)
        .map(|(outcome, (path, _))| {
            let (tmp, _) = outcome?;
            fs::rename(&tmp, path).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        })
        .collect();
    // Each directory once, and its outcome to every file renamed in it.
    let mut synced: Vec<(Option<&Path>, io::Result<()>)> = Vec::new();
    for (outcome, (path, _)) in renamed.iter_mut().zip(files) {
        if outcome.is_err() {
            continue;
        }
        let dir = path.parent();
        if !synced.iter().any(|(d, _)| *d == dir) {
            synced.push((dir, sync_parent(path)));
        }
        if let Some((_, Err(error))) = synced.iter().find(|(d, _)| *d == dir) {
            *outcome = Err(io::Error::new(error.kind(), error.to_string()));
        }
    }
    renamed
}

/// Syncs the directory holding `path`, which makes a rename or a removal in it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Syncs `dir`, which makes the renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Where [`replace`] writes before renaming: a hidden file beside `path`.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.bin");
        replace(&path, b"first").unwrap();
        replace(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["graph.bin"]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        replace(&path, b"old").unwrap();
        // A directory where the file should go makes the rename fail.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(replace(&blocked, b"new").is_err());
        assert!(!dir.path().join(".blocked.tmp").exists());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn files_replaced_together_each_hold_their_bytes_and_one_that_fails_spoils_none_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        replace(&a, b"old a").unwrap();
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"x").unwrap();
        let outcomes = replace_many(&[(&a, b"new a"), (&blocked, b"never"), (&b, b"new b")]);
        let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, true, false]);
        assert_eq!((fs::read(&a).unwrap(), fs::read(&b).unwrap()), (b"new a".to_vec(), b"new b".to_vec()));
        let mut names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.bin", "b.bin", "blocked"]);
    }
}
