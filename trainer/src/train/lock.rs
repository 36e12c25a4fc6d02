//! One job per run directory: `{run}/.lock`, locked (`flock`, exclusive) by the job for as long
//! as it runs, with its PID written inside for the message a second job gets. The kernel
//! releases the lock when the process ends, however it ends, so the file a killed job leaves
//! behind blocks nobody (docs/design.md, "Run directory").

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The lock file's name in the run directory.
pub const LOCK_FILE: &str = ".lock";

/// The held lock of a run directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Locks the existing folder `root`, or fails naming the PID of the job that holds it.
    pub fn acquire(root: &Path) -> Result<Self, Error> {
        let path = root.join(LOCK_FILE);
        let mut file = open_no_follow(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::RunDirInUse {
                    dir: root.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path)(e)),
        }
        write_pid(&mut file).map_err(Error::io(&path))?;
        Ok(Self { _file: file, path })
    }
}

/// Replaces the lock file's content with this process's PID.
fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
}

/// Opens `path` with `options`, refusing to follow a symbolic link in its place (one planted
/// in the run directory would send our writes elsewhere).
pub fn open_no_follow(path: &Path, options: &mut OpenOptions) -> Result<File, Error> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(options, libc::O_NOFOLLOW);
    options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Error::BadFile {
                path: path.to_path_buf(),
                message: "is a symbolic link; refusing to write through it (the run's files \
                          belong in its folder: remove the link)"
                    .into(),
            };
        }
        Error::io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_pid_and_a_dropped_one_is_free() {
        let dir = std::env::temp_dir().join(format!("run-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = RunLock::acquire(&dir).unwrap();
        let err = RunLock::acquire(&dir).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let pid = std::process::id().to_string();
        assert!(err.to_string().contains(&format!("PID {pid}")), "{err}");
        drop(held);
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
