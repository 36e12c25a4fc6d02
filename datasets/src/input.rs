//! Reading the files a job names (configs, templates, tokenizers, training state, data): regular
//! files only, each kind with a size limit, so that a FIFO never blocks the job, a device
//! (`/dev/zero`, `/dev/urandom`, also behind a link) is never read until memory runs out, and a
//! file larger than its kind can be is refused before it is read.
//!
//! Refusals are `std::io::Error`s (kind `InvalidInput`) carrying an [`InputRefused`], so that
//! every caller's existing I/O error path names the file; [`is_refused`] tells them apart from
//! failures of the system, for the exit code (a refused input is bad input: exit 2).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The most a configuration-like text file may hold: a job config, a checkpoint's
/// `config.json`, `generation_config.json`, `tokenizer_config.json`, `state.json`, a chat
/// template, a token list. The largest real ones are well under 1 MiB (a long chat template:
/// ~20 KB; Qwen2's `tokenizer_config.json`: ~7 KB).
pub const CONFIG_LIMIT: u64 = 16 << 20;

/// The most a tokenizer file (`tokenizer.json`, `vocab.json`, `merges.txt`) may hold; the
/// largest in common use are ~35 MB (Gemma's).
pub const TOKENIZER_LIMIT: u64 = 512 << 20;

/// Why a file was refused before it was read.
#[derive(Debug, thiserror::Error)]
pub enum InputRefused {
    #[error("is a {kind}, not a regular file (a file to read is wanted here)")]
    NotRegular { kind: &'static str },
    #[error("holds {size} bytes, more than the {limit} bytes a {what} may hold")]
    TooLarge { size: u64, limit: u64, what: String },
}

/// True when `error` is a refusal of [`open_regular`] / [`read_limited`] (bad input), not a
/// failure of the system.
pub fn is_refused(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<InputRefused>())
}

fn refuse(why: InputRefused) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// What a file that is not a regular file is, for the message.
fn kind_name(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if meta.is_dir() {
        "folder"
    } else {
        "special file"
    }
}

/// Opens `path` (links followed) for reading if it is a regular file. It is checked before it
/// is opened (opening a FIFO would wait for a writer) and the open file again (the path may
/// have been replaced in between; the open itself does not block: `O_NONBLOCK`).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(refuse(InputRefused::NotRegular {
            kind: kind_name(&meta),
        }));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(InputRefused::NotRegular {
            kind: kind_name(&meta),
        }));
    }
    Ok(file)
}

/// Reads the regular file `path` whole if it holds at most `limit` bytes; `what` names the
/// kind of file in the refusal ("chat template"). The limit also holds for a file that grows
/// while it is read.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    let too_large = |size| {
        refuse(InputRefused::TooLarge {
            size,
            limit,
            what: what.to_string(),
        })
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_limited`] of a UTF-8 text file.
pub fn read_text_limited(path: &Path, limit: u64, what: &str) -> io::Result<String> {
    String::from_utf8(read_limited(path, limit, what)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("datasets-input-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_within_its_limit_is_read() {
        let path = scratch("ok").join("a.json");
        std::fs::write(&path, "{\"a\": 1}").unwrap();
        assert_eq!(read_text_limited(&path, 8, "config").unwrap(), "{\"a\": 1}");
    }

    #[test]
    fn a_file_over_its_limit_is_refused_naming_the_sizes() {
        let path = scratch("large").join("a.json");
        std::fs::write(&path, "123456789").unwrap();
        let err = read_limited(&path, 8, "config").unwrap_err();
        assert!(is_refused(&err), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("9 bytes") && message.contains("8 bytes a config"),
            "{message}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn devices_fifos_and_folders_are_refused_without_reading() {
        let dir = scratch("special");
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let link = dir.join("urandom.json");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/urandom", &link).unwrap();
        for (path, kind) in [
            (fifo.as_path(), "FIFO"),
            (Path::new("/dev/zero"), "character device"),
            (link.as_path(), "character device"),
            (dir.as_path(), "folder"),
        ] {
            // A FIFO without a writer would block here if it were opened.
            let err = read_limited(path, u64::MAX, "config").unwrap_err();
            assert!(is_refused(&err), "{}: {err}", path.display());
            assert!(err.to_string().contains(kind), "{}: {err}", path.display());
        }
    }

    #[test]
    fn a_missing_file_is_not_a_refusal() {
        let err = read_limited(Path::new("/nonexistent/x.json"), 8, "config").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!is_refused(&err));
    }
}
