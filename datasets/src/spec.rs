//! The `data` section of a job config: which files, in which format, how they are split,
//! windowed, shuffled and cached. Unknown keys are an error.
//!
//! ```json
//! "data": {
//!   "train": "datasets/data/shakespeare_milton",
//!   "validation": {"fraction": 0.05},
//!   "seq_len": 256, "shuffle": true, "seed": 1337
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DataError;
use crate::template::Template;

/// Default folder of tokenized caches, relative to the working directory (`runs/` is
/// git-ignored, see docs/design.md "Workspace").
pub const DEFAULT_CACHE_DIR: &str = "runs/.token-cache";

/// The data section of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Format of the files: `auto` (default) picks it from each file's extension:
    /// `.txt` text, `.jsonl`/`.json` JSONL, `.csv` CSV, `.tsv` TSV.
    #[serde(default)]
    pub format: DataFormat,
    /// Training data: a file, a list of files, or a folder (its files with the format's
    /// extension, sorted by name, not recursive; hidden files skipped).
    pub train: Paths,
    /// Validation data: `"none"` (default), `{"fraction": 0.1}` held out of `train`
    /// (the tail of a token stream; a seeded choice of examples), or `{"paths": ...}`.
    #[serde(default)]
    pub validation: Validation,
    /// Tokens per sequence (T); a language-model window reads T+1 tokens.
    pub seq_len: usize,
    /// Shuffle training windows or examples with `seed` (validation is read in order).
    #[serde(default)]
    pub shuffle: bool,
    /// Seed of the shuffle and of the fraction split of examples.
    #[serde(default)]
    pub seed: u64,
    /// Pack several examples into each window (prompt/completion, chat and classification
    /// data): each example attends only to itself and its positions restart at 0, so the
    /// loss is the unpacked run's and only a window's tail is padding. Language-model windows
    /// are full already: there it is an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// JSONL field names (defaults `text`, `prompt`, `completion`, `messages`).
    #[serde(default)]
    pub jsonl: JsonlConfig,
    /// Conversations (`{"messages": [...]}` records): the chat template and where the loss goes.
    #[serde(default, skip_serializing_if = "ChatConfig::is_default")]
    pub chat: ChatConfig,
    /// Classification options; required for CSV/TSV files.
    #[serde(default)]
    pub csv: Option<CsvConfig>,
    /// Folder of tokenized caches (default `runs/.token-cache`).
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CACHE_DIR)
}

/// File format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// By extension.
    #[default]
    Auto,
    /// Plain UTF-8 text; each file is one document.
    Text,
    /// One JSON object a line: `{"text": ...}`, `{"prompt": ..., "completion": ...}` or
    /// `{"messages": [{"role": ..., "content": ...}, ...]}`.
    Jsonl,
    /// Comma-separated, double quotes honoured by default.
    Csv,
    /// Tab-separated, quotes taken literally by default (as GLUE's readers do).
    Tsv,
}

impl DataFormat {
    /// The concrete format of `path`: `self` unless `Auto`, else by extension.
    pub fn resolve(self, path: &Path) -> Result<DataFormat, DataError> {
        if self != DataFormat::Auto {
            return Ok(self);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("txt") | Some("text") => Ok(DataFormat::Text),
            Some("jsonl") | Some("json") | Some("ndjson") => Ok(DataFormat::Jsonl),
            Some("csv") => Ok(DataFormat::Csv),
            Some("tsv") => Ok(DataFormat::Tsv),
            _ => Err(DataError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Extensions a folder is searched for.
    pub(crate) fn extensions(self) -> &'static [&'static str] {
        match self {
            DataFormat::Auto => &["txt", "text", "jsonl", "json", "ndjson", "csv", "tsv"],
            DataFormat::Text => &["txt", "text"],
            DataFormat::Jsonl => &["jsonl", "json", "ndjson"],
            DataFormat::Csv => &["csv"],
            DataFormat::Tsv => &["tsv"],
        }
    }
}

/// One path or a list; in JSON a string or an array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paths(pub Vec<PathBuf>);

impl Serialize for Paths {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Paths {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(p) => Paths(vec![p]),
            OneOrMany::Many(v) => Paths(v),
        })
    }
}

impl<P: Into<PathBuf>> From<P> for Paths {
    fn from(p: P) -> Self {
        Paths(vec![p.into()])
    }
}

/// Where validation data comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Validation {
    /// No validation data.
    #[default]
    None,
    /// This fraction of `train`, held out (0 < fraction < 1).
    Fraction(f64),
    /// Separate files, in the same format rules as `train`.
    Paths(Paths),
}

/// JSONL field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlConfig {
    /// Field holding a document (language-model data).
    pub text_field: String,
    /// Field holding the prompt (no loss is taken on it).
    pub prompt_field: String,
    /// Field holding the completion (the loss is taken on it and on the end-of-text after it).
    pub completion_field: String,
    /// Field holding a conversation: a list of `{"role", "content"}` messages (chat data).
    pub messages_field: String,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        JsonlConfig {
            text_field: "text".into(),
            prompt_field: "prompt".into(),
            completion_field: "completion".into(),
            messages_field: "messages".into(),
        }
    }
}

/// How conversations become training sequences (`datasets::chat`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// The Jinja chat template: `"checkpoint"` (default: the `chat_template` of the model
    /// checkpoint's `tokenizer_config.json`, or its `chat_template.jinja`), `"chatml"` (the
    /// built-in `<|im_start|>role\ncontent<|im_end|>\n`), or `{"path": "file.jinja"}`.
    pub template: ChatTemplateSource,
    /// Which tokens carry the loss: `"assistant"` (default: the text each assistant message
    /// adds, its closing tag included) or `"all"` (every token of the conversation).
    pub loss: ChatLoss,
}

impl ChatConfig {
    pub(crate) fn is_default(&self) -> bool {
        *self == ChatConfig::default()
    }
}

/// Where the chat template comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ChatTemplateSource {
    /// `chat_template.jinja`, else the `chat_template` key of `tokenizer_config.json`, in the
    /// job's `model.checkpoint` folder (where Hugging Face keeps them).
    #[default]
    Checkpoint,
    /// ChatML, built in.
    Chatml,
    /// A Jinja file.
    Path(PathBuf),
}

/// Which tokens of a conversation carry the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatLoss {
    /// The text each assistant message adds (not the header the generation prompt writes).
    #[default]
    Assistant,
    /// Every token (the first one is no target).
    All,
}

/// GLUE-style classification: each row becomes a prompt (the template filled with the row's
/// columns) and a label word (the verbalizer's word for the row's label).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// Prompt with `{column}` placeholders (header names, or 0-based indices without a
    /// header); `{{` and `}}` are literal braces. E.g. "Line: {sentence}\nAuthor:".
    pub template: String,
    /// Column holding the label (a header name, or a 0-based index without a header).
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Label as written in the file -> the word the model should continue with, e.g.
    /// {"0": " negative", "1": " positive"}. Start words with a space for GPT-2.
    pub verbalizer: BTreeMap<String, String>,
    /// Whether the first row names the columns (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Field delimiter; default `,` for CSV and tab for TSV.
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Whether double quotes delimit fields; default true for CSV, false for TSV.
    #[serde(default)]
    pub quoting: Option<bool>,
}

fn default_label_column() -> String {
    "label".into()
}

fn default_true() -> bool {
    true
}

impl DataConfig {
    /// A config with defaults for everything but the training paths and `seq_len`.
    pub fn new(train: impl Into<Paths>, seq_len: usize) -> Self {
        DataConfig {
            format: DataFormat::Auto,
            train: train.into(),
            validation: Validation::None,
            seq_len,
            shuffle: false,
            seed: 0,
            packing: false,
            jsonl: JsonlConfig::default(),
            chat: ChatConfig::default(),
            csv: None,
            cache_dir: default_cache_dir(),
        }
    }

    /// Makes relative data paths and `cache_dir` relative to `base` (e.g. the config's folder).
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.train.0.iter_mut().for_each(fix);
        if let Validation::Paths(paths) = &mut self.validation {
            paths.0.iter_mut().for_each(fix);
        }
        if let ChatTemplateSource::Path(p) = &mut self.chat.template {
            fix(p);
        }
        fix(&mut self.cache_dir);
    }

    /// Checks the fields that need no file access.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.train.0.is_empty() {
            return Err(DataError::config(
                "train",
                "give at least one file or folder",
            ));
        }
        if self.seq_len == 0 {
            return Err(DataError::config("seq_len", "must be at least 1"));
        }
        match &self.validation {
            Validation::Fraction(f) if !(*f > 0.0 && *f < 1.0) => {
                return Err(DataError::config(
                    "validation.fraction",
                    format!("{f} is not between 0 and 1 (exclusive)"),
                ))
            }
            Validation::Paths(p) if p.0.is_empty() => {
                return Err(DataError::config(
                    "validation.paths",
                    "give at least one path",
                ))
            }
            _ => {}
        }
        for (field, name) in [
            ("jsonl.text_field", &self.jsonl.text_field),
            ("jsonl.prompt_field", &self.jsonl.prompt_field),
            ("jsonl.completion_field", &self.jsonl.completion_field),
            ("jsonl.messages_field", &self.jsonl.messages_field),
        ] {
            if name.is_empty() {
                return Err(DataError::config(field, "must not be empty"));
            }
        }
        if let Some(csv) = &self.csv {
            Template::parse(&csv.template)?;
            if csv.verbalizer.is_empty() {
                return Err(DataError::config(
                    "csv.verbalizer",
                    "map at least one label",
                ));
            }
            if let Some(d) = csv.delimiter {
                if !d.is_ascii() {
                    return Err(DataError::config("csv.delimiter", "must be one ASCII char"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config_and_rejects_unknown_keys() {
        let json = r#"{
            "format": "tsv", "train": ["a.tsv", "b.tsv"], "validation": {"paths": "v.tsv"},
            "seq_len": 64, "shuffle": true, "seed": 7, "cache_dir": "c",
            "csv": {"template": "S: {sentence}\nA:", "verbalizer": {"0": " no", "1": " yes"}}
        }"#;
        let cfg: DataConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.train.0.len(), 2);
        assert_eq!(cfg.validation, Validation::Paths("v.tsv".into()));
        assert_eq!(cfg.csv.as_ref().unwrap().label_column, "label");
        cfg.validate().unwrap();
        let back: DataConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);

        let err = serde_json::from_str::<DataConfig>(r#"{"train": "a", "seq_len": 4, "bogus": 1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn validation_forms() {
        let none: Validation = serde_json::from_str("\"none\"").unwrap();
        let frac: Validation = serde_json::from_str(r#"{"fraction": 0.1}"#).unwrap();
        assert_eq!(none, Validation::None);
        assert_eq!(frac, Validation::Fraction(0.1));
        let mut cfg = DataConfig::new("x.txt", 8);
        cfg.validation = Validation::Fraction(1.5);
        assert!(
            matches!(cfg.validate(), Err(DataError::Config { field, .. }) if field == "validation.fraction")
        );
    }

    #[test]
    fn auto_format_by_extension() {
        let auto = DataFormat::Auto;
        assert_eq!(
            auto.resolve(Path::new("a/b.TXT")).unwrap(),
            DataFormat::Text
        );
        assert_eq!(
            auto.resolve(Path::new("a.jsonl")).unwrap(),
            DataFormat::Jsonl
        );
        assert_eq!(auto.resolve(Path::new("a.tsv")).unwrap(), DataFormat::Tsv);
        assert!(matches!(
            auto.resolve(Path::new("a.parquet")),
            Err(DataError::UnknownFormat { .. })
        ));
        assert_eq!(
            DataFormat::Text.resolve(Path::new("a.parquet")).unwrap(),
            DataFormat::Text
        );
    }
}
