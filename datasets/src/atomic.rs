//! Atomic file writes, for every crate of the workspace (token caches here; configs, checkpoints
//! and run files in the trainer). A file is written under a temporary name in its own folder,
//! synced, renamed over its final name, and the folder synced: a reader, or a run restarted
//! after a crash, sees the old file or the new one, never part of one. Each writer gets its own
//! randomly named temporary (`.NAME.XXXXXX.tmp`), so concurrent writers of one path never clobber
//! each other's temporaries; the last to commit wins.
//!
//! Errors are `std::io::Error`s (of the cause's kind) whose message says which step failed and
//! names the path it touched: the folder, the temporary, or the temporary and the final path.

use std::ffi::OsString;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Buffer of an [`AtomicFile`] made by [`AtomicFile::create`] (`BufWriter`'s default).
const DEFAULT_BUFFER: usize = 8 * 1024;

/// A failed step of an atomic write, carried inside the `io::Error`. Each names the path the
/// step touched, so a caller that adds the final path (as to any `io::Error`) does not repeat it.
#[derive(Debug, thiserror::Error)]
enum AtomicWriteError {
    #[error("{path}: cannot write a file there: the path has no file name")]
    NoFileName { path: PathBuf },
    #[error("cannot create a temporary file in {dir}: {source}")]
    CreateTemp {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {tmp}: {source}")]
    Write {
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync {tmp} to disk: {source}")]
    Sync {
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {tmp} over {path}: {source}")]
    Rename {
        tmp: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("renamed into place, but cannot sync the folder {dir} to disk: {source}")]
    SyncDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<AtomicWriteError> for io::Error {
    fn from(e: AtomicWriteError) -> io::Error {
        use AtomicWriteError as E;
        let kind = match &e {
            E::NoFileName { .. } => io::ErrorKind::InvalidInput,
            E::CreateTemp { source, .. }
            | E::Write { source, .. }
            | E::Sync { source, .. }
            | E::Rename { source, .. }
            | E::SyncDir { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// Writes `bytes` to `path` atomically: `path` holds its old content or all of `bytes`. The
/// folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // Unbuffered: one write of the whole slice.
    let mut file = AtomicFile::with_capacity(0, path)?;
    if let Err(source) = file.write_all(bytes) {
        let tmp = file.temp_path().to_path_buf();
        return Err(AtomicWriteError::Write { tmp, source }.into());
    }
    file.commit()
}

/// A file written by streaming, made visible at its path only by [`AtomicFile::commit`].
/// Dropped without a commit, it deletes its temporary and leaves any file at the path as it was.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    /// `None` only after `commit` or inside `drop`.
    out: Option<BufWriter<NamedTempFile>>,
}

impl AtomicFile {
    /// Starts writing `path` (its folder must exist), buffered.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::with_capacity(DEFAULT_BUFFER, path)
    }

    /// Like [`AtomicFile::create`], with a write buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| AtomicWriteError::NoFileName {
                path: path.to_path_buf(),
            })?;
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // tempfile's default is 0o600; ask for what `File::create` gives (0o666 less the umask),
        // so a file written atomically has the permissions it would have otherwise.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let dir = parent_dir(path);
        let tmp = builder
            .tempfile_in(dir)
            .map_err(|source| AtomicWriteError::CreateTemp {
                dir: dir.to_path_buf(),
                source,
            })?;
        // Held until the temporary is renamed or deleted: [`remove_stale_temporaries`] leaves
        // a temporary alone while its writer lives (the kernel drops the lock with the process).
        // A file system without locks only loses that protection.
        let _ = tmp.as_file().try_lock();
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(capacity, tmp)),
        })
    }

    /// The path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn out(&mut self) -> &mut BufWriter<NamedTempFile> {
        self.out.as_mut().expect("AtomicFile used after commit")
    }

    fn temp_path(&self) -> &Path {
        let out = self.out.as_ref().expect("AtomicFile used after commit");
        out.get_ref().path()
    }

    /// Flushes and syncs the temporary, renames it over the path, and syncs the folder.
    pub fn commit(self) -> io::Result<()> {
        self.commit_keep_open().map(drop)
    }

    /// Like [`AtomicFile::commit`], and returns the file, open for writing at its end: a file
    /// that is appended to afterwards is never opened again by its path (which could by then
    /// be a symbolic link to somewhere else).
    pub fn commit_keep_open(mut self) -> io::Result<std::fs::File> {
        let tmp_path = self.temp_path().to_path_buf();
        let out = self.out.take().expect("AtomicFile committed twice");
        let path = &self.path;
        // On an error below, the temporary is dropped, which deletes it.
        let tmp = out.into_inner().map_err(|e| AtomicWriteError::Write {
            tmp: tmp_path.clone(),
            source: e.into_error(),
        })?;
        let synced = tmp.as_file().sync_all();
        synced.map_err(|source| AtomicWriteError::Sync {
            tmp: tmp_path.clone(),
            source,
        })?;
        let file = tmp.persist(path).map_err(|e| AtomicWriteError::Rename {
            tmp: tmp_path,
            path: path.clone(),
            source: e.error,
        })?;
        let _ = file.unlock();
        let mut file = file;
        file.seek(SeekFrom::End(0))
            .map_err(|source| AtomicWriteError::Write {
                tmp: path.clone(),
                source,
            })?;
        let dir = parent_dir(path);
        sync_dir(dir).map_err(|source| AtomicWriteError::SyncDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(file)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out().write_all(buf)
    }
    /// Hands buffered bytes to the temporary file; nothing is visible at the path before
    /// `commit`.
    fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}

/// Seeking flushes the buffer first (for headers patched in after the body is written).
impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.out().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // Not committed: discard the buffer unwritten; dropping the temporary deletes it.
            let (tmp, _unwritten) = out.into_parts();
            let _ = tmp.close();
        }
    }
}

/// Whether `name` is the name of an [`AtomicFile`]'s temporary (`.NAME.XXXXXX.tmp`).
pub fn is_temporary_name(name: &str) -> bool {
    name.len() > ".x.tmp".len() && name.starts_with('.') && name.ends_with(".tmp")
}

/// Deletes the temporaries that writers killed or failed mid-write left in `dir` (files named
/// `.NAME.XXXXXX.tmp`), except those a live writer still holds; returns how many it deleted.
/// A missing folder has none. Symbolic links and folders are left alone.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !is_temporary_name(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        // A writer holds its temporary locked: one that can be locked is abandoned, unless it
        // is empty and new: a writer creates its temporary and then locks it, and may be
        // between the two (a killed writer's empty file goes at a later clean-up).
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.try_lock().is_err() || just_created(&file) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(removed)
}

/// How long an empty temporary counts as one a writer has created but not yet locked.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `file` is empty and was modified less than [`UNLOCKED_GRACE`] ago.
fn just_created(file: &std::fs::File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
    meta.len() == 0 && age.is_some_and(|age| age < UNLOCKED_GRACE)
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes a rename in `dir` durable (POSIX: the rename lives in the folder's entry, which
/// `fsync` of the file does not cover).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    // Windows cannot open a folder as a file; NTFS journals the rename itself.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Moves the finished folder `staging` to `target`, replacing a `target` that exists as a whole
/// (it is first renamed to `retired`, then deleted), and syncs the parent folder so the rename
/// is durable. `staging`, `target` and `retired` must be in one folder.
pub fn replace_dir(staging: &Path, target: &Path, retired: &Path) -> io::Result<()> {
    let with_path = |path: &Path| {
        let path = path.display().to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
    };
    if target.exists() {
        std::fs::rename(target, retired).map_err(with_path(target))?;
        std::fs::rename(staging, target).map_err(with_path(target))?;
        std::fs::remove_dir_all(retired).map_err(with_path(retired))?;
    } else {
        std::fs::rename(staging, target).map_err(with_path(target))?;
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // POSIX: a directory entry is persisted by syncing its directory.
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(with_path(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_existing_file_is_replaced_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, "old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new content").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(
            names(dir.path()).len(),
            2,
            "the temporary sits beside the file"
        );
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new content");
        assert_eq!(names(dir.path()), ["f.json"]);
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, "old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap(); // more than the buffer: the temporary has data
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(dir.path()), ["f.json"]);
    }

    #[test]
    fn concurrent_writers_of_one_path_keep_their_own_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.tok");
        let mut a = AtomicFile::create(&path).unwrap();
        let mut b = AtomicFile::create(&path).unwrap();
        a.write_all(b"from a").unwrap();
        b.write_all(b"from b").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from a");
        b.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from b");
        assert_eq!(names(dir.path()), ["cache.tok"]);
    }

    #[test]
    fn seeking_patches_bytes_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"0000body").unwrap();
        f.seek(SeekFrom::Start(1)).unwrap();
        f.write_all(b"hdr").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0hdrbody");
    }

    #[test]
    fn write_atomic_writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["w.txt"]);
    }

    #[test]
    fn write_atomic_into_a_missing_folder_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("w.txt");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // The missing folder, which is what a caller adding the final path does not say.
        let missing = dir.path().join("missing").display().to_string();
        let msg = err.to_string();
        let expected = format!("cannot create a temporary file in {missing}: ");
        assert!(msg.starts_with(&expected), "{msg}");
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn a_path_without_a_file_name_is_refused_by_name() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("/: "), "{err}");
    }

    #[test]
    fn stale_temporaries_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.tok");
        std::fs::write(dir.path().join(".cache.tok.abc123.tmp"), "killed").unwrap();
        std::fs::write(dir.path().join(".hidden"), "not a temporary").unwrap();
        let mut live = AtomicFile::create(&path).unwrap();
        live.write_all(b"still writing").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(names(dir.path()).len(), 2, "{:?}", names(dir.path()));
        live.commit().unwrap();
        assert_eq!(names(dir.path()), [".hidden", "cache.tok"]);
        assert_eq!(
            remove_stale_temporaries(&dir.path().join("absent")).unwrap(),
            0
        );
    }

    #[test]
    fn an_empty_new_temporary_is_kept_as_a_writer_about_to_lock_it() {
        let dir = tempfile::tempdir().unwrap();
        let (fresh, old) = (
            dir.path().join(".a.tok.fresh1.tmp"),
            dir.path().join(".b.tok.old123.tmp"),
        );
        std::fs::write(&fresh, "").unwrap();
        let file = std::fs::File::create(&old).unwrap();
        file.set_modified(std::time::SystemTime::now() - 2 * UNLOCKED_GRACE)
            .unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(names(dir.path()), [".a.tok.fresh1.tmp"]);
    }

    #[test]
    fn a_file_kept_open_on_commit_appends_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"header\n").unwrap();
        let mut file = f.commit_keep_open().unwrap();
        file.write_all(b"row\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "header\nrow\n");
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_those_of_a_plainly_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, atomic) = (dir.path().join("plain"), dir.path().join("atomic"));
        std::fs::write(&plain, b"x").unwrap();
        write_atomic(&atomic, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }
}
