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
        out.push_example(&prompt, &verbalizer.tokens[label], Some(label))?;
        rows += 1;
    }
    Ok(rows)
}
