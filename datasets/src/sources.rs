//! From configured paths to a list of source files with their formats, and what kind of data
//! they hold (language-model text, prompt/completion pairs, or classification rows).

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::formats::jsonl;
use crate::spec::{DataFormat, JsonlConfig, Paths};

// Re-exported where it used to live, so `datasets::sources::DataKind` still names it.
pub use crate::kind::DataKind;

/// One file and its concrete format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: DataFormat,
}

/// Expands files, lists and folders; every path must exist, every folder hold data files.
pub fn resolve(paths: &Paths, format: DataFormat) -> Result<Vec<SourceFile>, DataError> {
    let mut out = Vec::new();
    for path in &paths.0 {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            let found = folder_files(path, format)?;
            if found.is_empty() {
                let wanted = format
                    .extensions()
                    .iter()
                    .map(|e| format!("*.{e}"))
                    .collect::<Vec<_>>();
                return Err(DataError::EmptyFolder {
                    path: path.clone(),
                    wanted: wanted.join(" / "),
                });
            }
            for p in found {
                out.push(SourceFile {
                    format: format.resolve(&p)?,
                    path: p,
                });
            }
        } else {
            // A FIFO would block the job and a device never end: data files are regular.
            crate::input::open_regular(path).map_err(|e| DataError::io(path, e))?;
            out.push(SourceFile {
                format: format.resolve(path)?,
                path: path.clone(),
            });
        }
    }
    Ok(out)
}

fn folder_files(dir: &Path, format: DataFormat) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let wanted = ext.is_some_and(|e| format.extensions().contains(&e.as_str()));
        if wanted && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The kind of data in `files`; all must agree (text and JSONL text may be mixed).
pub fn detect_kind(files: &[SourceFile], jsonl_cfg: &JsonlConfig) -> Result<DataKind, DataError> {
    let mut first: Option<(DataKind, &Path)> = None;
    for f in files {
        let kind = match f.format {
            DataFormat::Text | DataFormat::Auto => DataKind::LanguageModel,
            DataFormat::Csv | DataFormat::Tsv => DataKind::Classification,
            DataFormat::Jsonl => match jsonl::peek_kind(&f.path, jsonl_cfg)? {
                Some(kind) => kind,
                None => continue, // no records: reported as an empty corpus if all are empty
            },
        };
        match first {
            None => first = Some((kind, &f.path)),
            Some((expected, first_path)) if expected != kind => {
                return Err(DataError::MixedKinds {
                    path: f.path.clone(),
                    kind: kind.name().into(),
                    expected: expected.name().into(),
                    first: first_path.to_path_buf(),
                })
            }
            Some(_) => {}
        }
    }
    match first {
        Some((kind, _)) => Ok(kind),
        None => Err(DataError::EmptyCorpus {
            path: files.first().map(|f| f.path.clone()).unwrap_or_default(),
        }),
    }
}
