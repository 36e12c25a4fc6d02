//! Readers of the supported file formats. Each streams one file into a cache writer and reports
//! bad input with the file, the line (1-based) and, for encoding errors, the byte offset.

pub(crate) mod csv;
pub(crate) mod jsonl;
pub(crate) mod text;

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// Bytes read per block when streaming a file.
pub(crate) const READ_BLOCK: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Number of `\n` in `bytes`.
pub(crate) fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Extends the valid prefix `buf[..*valid]` as far as `buf` is valid UTF-8. An invalid byte, or
/// a character cut off by the end of the file (`eof`), is an error at its file offset and line;
/// `base_offset` / `base_line` are the offset and line of `buf[0]`.
pub(crate) fn check_utf8(
    path: &Path,
    buf: &[u8],
    valid: &mut usize,
    eof: bool,
    base_offset: u64,
    base_line: u64,
) -> Result<(), DataError> {
    match std::str::from_utf8(&buf[*valid..]) {
        Ok(_) => *valid = buf.len(),
        Err(e) => {
            let bad = *valid + e.valid_up_to();
            if e.error_len().is_some() || eof {
                return Err(DataError::InvalidUtf8 {
                    path: path.to_path_buf(),
                    line: base_line + count_lines(&buf[..bad]),
                    offset: base_offset + bad as u64,
                });
            }
            *valid = bad; // a character continues in the next block
        }
    }
    Ok(())
}

/// Checks that a whole file is UTF-8, streaming it.
pub(crate) fn check_file_utf8(path: &Path) -> Result<(), DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let (mut buf, mut valid, mut offset, mut line) = (Vec::new(), 0usize, 0u64, 1u64);
    let mut block = vec![0u8; READ_BLOCK];
    loop {
        let n = file.read(&mut block).map_err(|e| DataError::io(path, e))?;
        buf.extend_from_slice(&block[..n]);
        check_utf8(path, &buf, &mut valid, n == 0, offset, line)?;
        line += count_lines(&buf[..valid]);
        offset += valid as u64;
        buf.drain(..valid);
        valid = 0;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Strips a UTF-8 byte-order mark (editors on Windows write one); returns its length.
pub(crate) fn strip_bom(bytes: &[u8]) -> usize {
    if bytes.starts_with(BOM) {
        BOM.len()
    } else {
        0
    }
}
