//! Typed errors. Every error about user data names the file and, where there is one, the line
//! (1-based) or byte offset, and says what would fix it. Nothing in this crate panics on input.

use std::path::PathBuf;

/// Problems loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read tokenizer file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable tokenizer file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path}: no end-of-text token in the vocabulary (looked for {looked_for}); \
         add one or set `eos_token` in tokenizer_config.json beside it"
    )]
    NoEndOfText { path: PathBuf, looked_for: String },
    #[error(
        "{path}: neither a tokenizer.json file nor a folder holding tokenizer.json or \
         vocab.json + merges.txt"
    )]
    NotATokenizer { path: PathBuf },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownToken { id: u32, vocab_size: usize },
    #[error("tokens decode to invalid UTF-8 at byte {offset} (a character split between tokens?)")]
    InvalidUtf8 { offset: usize },
    #[error("tokenizer {id}: {message}")]
    Backend { id: String, message: String },
}

impl TokenizerError {
    /// True when a tokenizer file or its settings are at fault (exit code 2): a file that
    /// cannot be read or parsed, or has no end-of-text token. False for what goes wrong while
    /// tokens are decoded or inside the tokenizer library.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::Parse { .. }
                | Self::NoEndOfText { .. }
                | Self::NotATokenizer { .. }
        )
    }
}

/// Why a tokenized cache file cannot be used. The cache is then rebuilt and the reason logged;
/// it reaches the user as an error only if a cache just written fails to open.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: cannot open the token cache: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot memory-map the token cache: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a token cache of this version (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: token cache header is truncated")]
    TruncatedHeader { path: PathBuf },
    #[error("{path}: token cache header is unreadable: {source}")]
    BadHeader {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: token cache was built for other {what}")]
    Stale { path: PathBuf, what: &'static str },
    #[error("{path}: sizes in the token cache header do not fit the file")]
    BadSizes { path: PathBuf },
}

/// Problems with data: configuration, files, caches and resume state.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data config field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("{path}: no such file or folder (check the data paths in the job config)")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: folder holds no {wanted} files")]
    EmptyFolder { path: PathBuf, wanted: String },
    #[error("{path}: cannot tell the format from the extension; set `format` in the data config")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: corpus is empty (no text, no records); check the file")]
    EmptyCorpus { path: PathBuf },
    #[error(
        "{path}: {what} has {tokens} tokens, fewer than the {needed} one window needs \
         ({why}); use more data or a smaller seq_len / batch size"
    )]
    TooShort {
        path: PathBuf,
        what: String,
        tokens: u64,
        needed: u64,
        why: String,
    },
    #[error(
        "{path}: a validation fraction of {fraction} of its {count} {what} leaves the {empty} \
         split empty; use more data or another fraction"
    )]
    SplitEmpty {
        path: PathBuf,
        /// `tokens` or `examples`.
        what: &'static str,
        count: u64,
        fraction: f64,
        /// `training` or `validation`.
        empty: &'static str,
    },
    #[error("{path}:{line}: invalid UTF-8 at byte offset {offset}; re-save the file as UTF-8")]
    InvalidUtf8 {
        path: PathBuf,
        line: u64,
        offset: u64,
    },
    #[error("{path}:{line}: malformed JSON: {message}")]
    MalformedJson {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    BadRecord {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{origin}: {message}")]
    ChatTemplate { origin: String, message: String },
    #[error("{path}: {kind} data cannot be mixed with {expected} data from {first}")]
    MixedKinds {
        path: PathBuf,
        kind: String,
        expected: String,
        first: PathBuf,
    },
    #[error("{path}: no column `{column}` in the header (columns: {available})")]
    UnknownColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}:{line}: row has {found} columns, so column `{column}` is missing")]
    MissingColumn {
        path: PathBuf,
        line: u64,
        column: String,
        found: usize,
    },
    #[error("{path}:{line}: label `{label}` is not in the verbalizer (known labels: {known})")]
    UnknownLabel {
        path: PathBuf,
        line: u64,
        label: String,
        known: String,
    },
    #[error(
        "data config field `csv.verbalizer`: label `{label}` maps to {word:?}, which \
         tokenizes to no tokens; give it a non-empty word such as \" {label}\""
    )]
    EmptyLabelWord { label: String, word: String },
    #[error("{path}:{line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: tokenizing failed: {source}")]
    Tokenize {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error("{path}: cannot write tokenized cache: {source}")]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "saved data position belongs to `{saved}`, but this loader is `{current}`; the data, \
         tokenizer, batch shape or seed changed since the checkpoint"
    )]
    StateMismatch { saved: String, current: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl DataError {
    /// True when the data or the data config is at fault (exit code 2); false when the system
    /// failed us (the token cache cannot be written: a full disk, a read-only folder).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, DataError::CacheWrite { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, source }
        }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
