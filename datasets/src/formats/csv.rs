//! GLUE-style CSV/TSV classification: each row becomes a prompt (the template filled with the
//! row's columns) and a completion (the label word of the row's label, from the verbalizer).
//! The file is checked to be UTF-8 first, so encoding errors report exact byte offsets.

use std::path::Path;

use crate::cache::CacheWriter;
use crate::error::DataError;
use crate::spec::{CsvConfig, DataFormat};
use crate::template::{Template, Verbalizer};
use crate::tokenizer::Tokenizer;

/// Options resolved for one format (CSV or TSV).
struct Dialect {
    delimiter: u8,
    quoting: bool,
}

fn dialect(cfg: &CsvConfig, format: DataFormat) -> Dialect {
    let tsv = format == DataFormat::Tsv;
    Dialect {
        delimiter: cfg
            .delimiter
            .map_or(if tsv { b'\t' } else { b',' }, |c| c as u8),
        quoting: cfg.quoting.unwrap_or(!tsv),
    }
}

/// Tokenizes every row. Returns the number of rows.
pub(crate) fn tokenize_file(
    path: &Path,
    format: DataFormat,
    cfg: &CsvConfig,
    template: &Template,
    verbalizer: &Verbalizer,
    tok: &dyn Tokenizer,
    out: &mut CacheWriter,
) -> Result<u64, DataError> {
    super::check_file_utf8(path)?;
    let d = dialect(cfg, format);
    if d.quoting {
        check_quotes(path, d.delimiter)?;
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(d.delimiter)
        .quoting(d.quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(super::READ_BLOCK, file));
    let csv_err = |e: csv::Error| DataError::Csv {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    };

    let mut record = csv::StringRecord::new();
    // Column names -> indices: from the header, or 0-based numbers without one.
    let mut names: Vec<String> = Vec::new();
    if cfg.header {
        if !reader.read_record(&mut record).map_err(csv_err)? {
            return Err(DataError::EmptyCorpus {
                path: path.to_path_buf(),
            });
        }
        names = record
            .iter()
            .map(|s| s.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
    }
    let index_of = |column: &str| -> Result<usize, DataError> {
        let found = if cfg.header {
            names.iter().position(|n| n == column)
        } else {
            column.parse::<usize>().ok()
        };
        found.ok_or_else(|| DataError::UnknownColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            available: if cfg.header {
                names.join(", ")
            } else {
                "no header: name columns by 0-based index, e.g. {0}".into()
            },
        })
    };
    let columns: Vec<(&str, usize)> = template
        .columns()
        .into_iter()
        .map(|c| index_of(c).map(|i| (c, i)))
        .collect::<Result<_, _>>()?;
    let label_col = index_of(&cfg.label_column)?;

    let mut rows = 0u64;
    while reader.read_record(&mut record).map_err(csv_err)? {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record[0].trim().is_empty() {
            continue; // blank line
        }
        let field = |column: &str, index: usize| {
            record.get(index).ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                line,
                column: column.to_string(),
                found: record.len(),
            })
        };
        let label_text = field(&cfg.label_column, label_col)?;
        let label = verbalizer
            .index(label_text)
            .ok_or_else(|| DataError::UnknownLabel {
                path: path.to_path_buf(),
                line,
                label: label_text.to_string(),
                known: verbalizer.labels.join(", "),
            })?;
        for &(c, i) in &columns {
            field(c, i)?;
        }
        let prompt_text = template.render(|c| {
            let i = columns
                .iter()
                .find(|(name, _)| *name == c)
                .map_or(0, |p| p.1);
            record.get(i).unwrap_or("")
        });
        let prompt = tok.try_encode(&prompt_text).map_err(|e| DataError::Csv {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        // The prompt begins with the tokenizer's beginning-of-sequence ids, if it has any.
        let prompt = [tok.bos_prefix(), prompt].concat();
        out.push_example(&prompt, &verbalizer.tokens[label], Some(label))?;
        rows += 1;
    }
    Ok(rows)
}

/// Refuses quoted fields that the csv reader would silently run on into the following rows:
/// a quote never closed (the rest of the file becomes one field), or one closed and followed
/// by more text (a stray quote that "closes" a field opened rows earlier). RFC 4180: a quoted
/// field ends at its closing quote, right before a delimiter, a line break or the end; `""`
/// inside is one quote; a quote inside an unquoted field is an ordinary character.
fn check_quotes(path: &Path, delimiter: u8) -> Result<(), DataError> {
    use std::io::Read;
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A quote inside a quoted field: closing, or the first of `""`.
        QuoteInQuoted,
    }
    let bad = |line: u64, message: String| DataError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut block = vec![0u8; super::READ_BLOCK];
    let (mut state, mut line, mut opened_at) = (State::FieldStart, 1u64, 0u64);
    loop {
        let n = file.read(&mut block).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        for &b in &block[..n] {
            state = match state {
                State::FieldStart if b == b'"' => {
                    opened_at = line;
                    State::Quoted
                }
                State::FieldStart | State::Unquoted
                    if b == delimiter || b == b'\n' || b == b'\r' =>
                {
                    State::FieldStart
                }
                State::FieldStart | State::Unquoted => State::Unquoted,
                State::Quoted if b == b'"' => State::QuoteInQuoted,
                State::Quoted => State::Quoted,
                State::QuoteInQuoted if b == b'"' => State::Quoted,
                State::QuoteInQuoted if b == delimiter || b == b'\n' || b == b'\r' => {
                    State::FieldStart
                }
                State::QuoteInQuoted => {
                    let shown = if b.is_ascii_graphic() || b == b' ' {
                        format!("`{}`", b as char)
                    } else {
                        format!("byte 0x{b:02x}")
                    };
                    return Err(bad(
                        opened_at,
                        format!(
                            "the quoted field opened on this line closes on line {line} and is \
                             followed by {shown}: a quote is missing or stray, which would merge \
                             rows (double a quote inside a quoted field: \"\")"
                        ),
                    ));
                }
            };
            if b == b'\n' {
                line += 1;
            }
        }
    }
    if state == State::Quoted {
        return Err(bad(
            opened_at,
            "the quoted field opened on this line is never closed: every row after it would \
             become part of it (close the quote, or set `csv.quoting` to false)"
                .to_string(),
        ));
    }
    Ok(())
}
