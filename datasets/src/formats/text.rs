//! Plain text: each file is one document, followed by end-of-text.
//!
//! Files are streamed: when the tokenizer allows it (`Tokenizer::newline_chunking_safe`) the
//! text is cut at "X\nY" boundaries into chunks of about `chunk_bytes`, which are tokenized in
//! parallel and written in order, so memory stays flat however large the file. The ids equal
//! those of encoding the whole file at once (tested).

use std::io::Read;
use std::path::Path;

use rayon::prelude::*;

use super::{check_utf8, count_lines, strip_bom, READ_BLOCK};
use crate::cache::CacheWriter;
use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// Default size of the pieces a document is tokenized in.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Chunks tokenized in parallel per round, per thread of the pool.
const CHUNKS_PER_THREAD: usize = 2;

/// True for visible ASCII: such a byte is never part of a whitespace run.
fn visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Largest `i` in `from..bytes.len()` with `bytes[i-2..=i]` = visible, `\n`, visible.
fn last_cut(bytes: &[u8], from: usize) -> Option<usize> {
    (from.max(2)..bytes.len())
        .rev()
        .find(|&i| bytes[i - 1] == b'\n' && visible(bytes[i]) && visible(bytes[i - 2]))
}

/// Smallest such `i` at or after `from`.
fn first_cut(bytes: &[u8], from: usize) -> Option<usize> {
    (from.max(2)..bytes.len())
        .find(|&i| bytes[i - 1] == b'\n' && visible(bytes[i]) && visible(bytes[i - 2]))
}

/// Cuts `bytes` into pieces of about `chunk` bytes at safe boundaries.
fn pieces(bytes: &[u8], chunk: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while bytes.len() - start > chunk {
        let limit = start + chunk;
        let cut = last_cut(&bytes[..limit], start + 1).or_else(|| first_cut(bytes, limit));
        match cut {
            Some(c) => {
                out.push(&bytes[start..c]);
                start = c;
            }
            None => break,
        }
    }
    out.push(&bytes[start..]);
    out
}

/// Encodes `text` in pieces of about `chunk_bytes` cut at safe boundaries (when the tokenizer
/// allows it), in parallel; the same ids as `tok.encode(text)`.
pub fn encode_in_chunks(tok: &dyn Tokenizer, text: &str, chunk_bytes: usize) -> Vec<u32> {
    if !tok.newline_chunking_safe() {
        return tok.encode(text);
    }
    let parts = pieces(text.as_bytes(), chunk_bytes.max(1));
    let encoded: Vec<Vec<u32>> = parts
        .par_iter()
        .map(|p| tok.encode(std::str::from_utf8(p).expect("cut at ASCII bytes")))
        .collect();
    encoded.concat()
}

/// Tokenizes one text file as a document (the tokenizer's [`Tokenizer::bos_prefix`], the text,
/// end-of-text). Returns false (and writes nothing) for an empty file.
pub(crate) fn tokenize_file(
    path: &Path,
    tok: &dyn Tokenizer,
    out: &mut CacheWriter,
    chunk_bytes: usize,
) -> Result<bool, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let chunking = tok.newline_chunking_safe();
    let round = chunk_bytes * CHUNKS_PER_THREAD * rayon::current_num_threads();
    let (mut buf, mut valid, mut offset, mut line) = (Vec::<u8>::new(), 0usize, 0u64, 1u64);
    let (mut eof, mut started, mut any) = (false, false, false);
    let mut want = round;
    let mut block = vec![0u8; READ_BLOCK];
    while !(eof && buf.is_empty()) {
        while !eof && buf.len() < want {
            let n = file.read(&mut block).map_err(|e| DataError::io(path, e))?;
            eof = n == 0;
            buf.extend_from_slice(&block[..n]);
        }
        if !started && (buf.len() >= 3 || eof) {
            started = true;
            let bom = strip_bom(&buf);
            buf.drain(..bom);
            offset += bom as u64;
        }
        check_utf8(path, &buf, &mut valid, eof, offset, line)?;
        let end = if eof {
            valid
        } else if chunking {
            last_cut(&buf[..valid], 1).unwrap_or(0)
        } else {
            0
        };
        if end == 0 && !eof {
            want = buf.len() + round; // no boundary yet: read on
            continue;
        }
        want = round;
        let parts = if chunking {
            pieces(&buf[..end], chunk_bytes)
        } else {
            vec![&buf[..end]]
        };
        let encoded: Vec<Result<Vec<u32>, _>> = parts
            .par_iter()
            // Each piece lies inside the validated prefix and is cut at ASCII bytes.
            .map(|p| tok.try_encode(std::str::from_utf8(p).expect("validated UTF-8")))
            .collect();
        if !any && end > 0 {
            // The document begins: the tokenizer's beginning-of-sequence ids, if it has any.
            out.push_tokens(&tok.bos_prefix())?;
        }
        for ids in encoded {
            let ids = ids.map_err(|source| DataError::Tokenize {
                path: path.to_path_buf(),
                source,
            })?;
            out.push_tokens(&ids)?;
        }
        any |= end > 0;
        line += count_lines(&buf[..end]);
        offset += end as u64;
        buf.drain(..end);
        valid -= end;
    }
    if any {
        out.push_tokens(&[tok.eot_token()])?;
    } else {
        log::warn!("{}: empty file, skipped", path.display());
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_only_between_visible_characters_around_a_newline() {
        let text = b"ab\ncd\n\nef\n gh\nij";
        let cuts: Vec<usize> = (0..text.len())
            .filter(|&i| first_cut(text, i) == Some(i))
            .collect();
        assert_eq!(cuts, vec![3, 14]); // before "cd" and "ij"; not after "\n\n" or before " gh"
        let joined: Vec<u8> = pieces(text, 4).concat();
        assert_eq!(joined, text);
        assert_eq!(
            pieces(text, 4),
            vec![&b"ab\n"[..], &b"cd\n\nef\n gh\n"[..], &b"ij"[..]]
        );
    }
}
