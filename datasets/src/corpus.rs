//! Tokenizing a list of source files into one cache, or reusing the cache built for them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::{CacheKey, CacheWriter, SourceStamp, TokenCache, CACHE_VERSION};
use crate::chat::ChatTemplate;
use crate::error::DataError;
use crate::formats::{csv, jsonl, text};
use crate::hash::Fnv64;
use crate::kind::DataKind;
use crate::sources::SourceFile;
use crate::spec::{CsvConfig, DataFormat, JsonlConfig};
use crate::template::{Template, Verbalizer};
use crate::tokenizer::Tokenizer;

/// Everything besides the files and the tokenizer that decides the tokens.
#[derive(Serialize)]
struct Options<'a> {
    formats: Vec<DataFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jsonl: Option<&'a JsonlConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    csv: Option<&'a CsvConfig>,
    /// Chat data: the template's hash and the loss option.
    #[serde(skip_serializing_if = "Option::is_none")]
    chat: Option<String>,
}

/// What a corpus build needs besides the files.
pub(crate) struct BuildSpec<'a> {
    pub kind: DataKind,
    pub tokenizer: &'a dyn Tokenizer,
    pub jsonl: &'a JsonlConfig,
    /// For classification data: the CSV options, parsed template and verbalizer.
    pub csv: Option<(&'a CsvConfig, &'a Template, &'a Verbalizer)>,
    /// For chat data: the template.
    pub chat: Option<&'a ChatTemplate>,
    pub cache_dir: &'a Path,
    pub chunk_bytes: usize,
}

/// Opens the cache of `files` if it is current, else tokenizes them into a new one.
pub(crate) fn build_or_open(
    files: &[SourceFile],
    spec: &BuildSpec,
) -> Result<TokenCache, DataError> {
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        let canonical = f
            .path
            .canonicalize()
            .map_err(|e| DataError::io(&f.path, e))?;
        sources.push(SourceStamp::of(&canonical)?);
    }
    let uses_jsonl = files.iter().any(|f| f.format == DataFormat::Jsonl);
    let options = Options {
        formats: files.iter().map(|f| f.format).collect(),
        jsonl: uses_jsonl.then_some(spec.jsonl),
        csv: spec.csv.map(|c| c.0),
        chat: spec.chat.map(ChatTemplate::cache_options),
    };
    let tok = spec.tokenizer;
    let key = CacheKey {
        version: CACHE_VERSION,
        kind: spec.kind,
        tokenizer_id: tok.id(),
        vocab_size: tok.vocab_size(),
        eot_token: tok.eot_token(),
        sources,
        options: serde_json::to_string(&options).expect("options serialize"),
    };
    let path = cache_path(spec.cache_dir, files, &key);
    // Temporaries of caches whose writer was killed or failed (those still being written by
    // another process are locked, and kept).
    match crate::atomic::remove_stale_temporaries(spec.cache_dir) {
        Ok(0) => {}
        Ok(n) => log::info!(
            "{}: removed {n} temporary file(s) of interrupted cache writes",
            spec.cache_dir.display()
        ),
        Err(e) => log::warn!("cannot clean up the token cache folder: {e}"),
    }
    if path.exists() {
        match TokenCache::open(&path, &key) {
            Ok(cache) => {
                log::info!("{}: using tokenized cache", path.display());
                return Ok(cache);
            }
            // The reason names the file.
            Err(reason) => log::info!("{reason}; rebuilding the tokenized cache"),
        }
    }
    build(files, spec, &path, key)
}

/// `<cache_dir>/<first file's stem>-<hash of files, options, tokenizer>.tok`.
fn cache_path(dir: &Path, files: &[SourceFile], key: &CacheKey) -> PathBuf {
    let mut h = Fnv64::new();
    for s in &key.sources {
        h.field(s.path.as_bytes());
    }
    h.field(key.tokenizer_id.as_bytes())
        .field(key.options.as_bytes());
    let stem: String = files
        .first()
        .and_then(|f| f.path.file_stem())
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { '_' })
                .take(40)
                .collect()
        })
        .unwrap_or_default();
    dir.join(format!("{stem}-{:016x}.tok", h.finish()))
}

fn build(
    files: &[SourceFile],
    spec: &BuildSpec,
    path: &Path,
    key: CacheKey,
) -> Result<TokenCache, DataError> {
    let started = std::time::Instant::now();
    let mut out = CacheWriter::create(path, key)?;
    let mut records = 0u64;
    for f in files {
        records += match (f.format, spec.kind) {
            (DataFormat::Text | DataFormat::Auto, _) => u64::from(text::tokenize_file(
                &f.path,
                spec.tokenizer,
                &mut out,
                spec.chunk_bytes,
            )?),
            (DataFormat::Jsonl, kind) => jsonl::tokenize_file(
                &f.path,
                spec.jsonl,
                kind,
                spec.chat,
                spec.tokenizer,
                &mut out,
            )?,
            (DataFormat::Csv | DataFormat::Tsv, _) => {
                let (cfg, template, verbalizer) = spec.csv.ok_or_else(|| {
                    DataError::config(
                        "csv",
                        format!("{} is CSV/TSV: give `csv` options", f.path.display()),
                    )
                })?;
                csv::tokenize_file(
                    &f.path,
                    f.format,
                    cfg,
                    template,
                    verbalizer,
                    spec.tokenizer,
                    &mut out,
                )?
            }
        };
    }
    if records == 0 || out.num_tokens() == 0 {
        return Err(DataError::EmptyCorpus {
            path: files.first().map(|f| f.path.clone()).unwrap_or_default(),
        });
    }
    let cache = out.finish()?;
    log::info!(
        "{}: tokenized {} files into {} tokens in {:.1} s",
        path.display(),
        files.len(),
        cache.header.n_tokens,
        started.elapsed().as_secs_f64()
    );
    Ok(cache)
}
