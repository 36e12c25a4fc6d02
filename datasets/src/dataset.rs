//! Opening the data a job config names: resolve files, tokenize (or reuse caches), split into
//! training and validation, and hand out loaders.

use std::path::PathBuf;

use crate::chat::ChatTemplate;
use crate::classification::ClassificationSet;
use crate::corpus::{build_or_open, BuildSpec};
use crate::error::DataError;
use crate::examples::{ExampleBatches, ExampleSet};
use crate::formats::text::CHUNK_BYTES;
use crate::kind::DataKind;
use crate::loader::DataLoader;
use crate::rng::permutation;
use crate::sources::{detect_kind, resolve};
use crate::spec::{DataConfig, Validation};
use crate::stream::TokenStream;
use crate::template::{Template, Verbalizer};
use crate::tokenizer::Tokenizer;
use crate::windows::{LmWindows, WindowOrder};

/// Seed stream of the fraction split (epochs use streams 0, 1, 2, ...).
const SPLIT_STREAM: u64 = u64::MAX;

/// Which split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitName {
    Train,
    Validation,
}

#[derive(Clone, Debug)]
enum SplitData {
    Stream(TokenStream),
    Examples(ExampleSet),
}

impl SplitData {
    fn num_tokens(&self) -> usize {
        match self {
            SplitData::Stream(s) => s.len(),
            SplitData::Examples(e) => e.cache.tokens().len(),
        }
    }
}

/// Tokenized training (and validation) data of a job.
#[derive(Clone, Debug)]
pub struct Dataset {
    kind: DataKind,
    seq_len: usize,
    shuffle: bool,
    seed: u64,
    /// Pack examples into windows (`data.packing`).
    packing: bool,
    pad: u32,
    train_origin: PathBuf,
    validation_origin: PathBuf,
    train: SplitData,
    validation: Option<SplitData>,
    verbalizer: Option<Verbalizer>,
    /// Chat data: the chat template's text (checkpoints carry it in `tokenizer_config.json`).
    chat_template: Option<String>,
}

impl Dataset {
    /// Resolves, tokenizes (or reuses the caches of) and splits the configured data.
    pub fn open(config: &DataConfig, tokenizer: &dyn Tokenizer) -> Result<Dataset, DataError> {
        Self::open_with_chunk_bytes(config, tokenizer, None, CHUNK_BYTES)
    }

    /// `open` for a model loaded from the checkpoint folder `checkpoint`, whose chat template
    /// (`tokenizer_config.json`) conversations use by default.
    pub fn open_with_checkpoint(
        config: &DataConfig,
        tokenizer: &dyn Tokenizer,
        checkpoint: Option<&std::path::Path>,
    ) -> Result<Dataset, DataError> {
        Self::open_with_chunk_bytes(config, tokenizer, checkpoint, CHUNK_BYTES)
    }

    /// `open` with another chunk size for large text files (tests exercise the chunking).
    #[doc(hidden)]
    pub fn open_with_chunk_bytes(
        config: &DataConfig,
        tokenizer: &dyn Tokenizer,
        checkpoint: Option<&std::path::Path>,
        chunk_bytes: usize,
    ) -> Result<Dataset, DataError> {
        config.validate()?;
        let train_files = resolve(&config.train, config.format)?;
        let kind = detect_kind(&train_files, &config.jsonl)?;
        let csv = match kind {
            DataKind::Classification => {
                let cfg = config.csv.as_ref().ok_or_else(|| {
                    DataError::config(
                        "csv",
                        "CSV/TSV data needs `csv` options (template, verbalizer)",
                    )
                })?;
                Some((
                    cfg,
                    Template::parse(&cfg.template)?,
                    Verbalizer::new(&cfg.verbalizer, tokenizer)?,
                ))
            }
            _ => None,
        };
        if config.packing && kind == DataKind::LanguageModel {
            return Err(DataError::config(
                "packing",
                format!(
                    "`data.packing` packs examples (prompt/completion, chat or classification \
                     data) into windows, but the data is {} data, read in full windows \
                     already; remove `data.packing` (or set it to false)",
                    kind.name()
                ),
            ));
        }
        let chat = match kind {
            DataKind::Chat => Some(
                ChatTemplate::resolve(&config.chat, checkpoint, tokenizer)?
                    .with_window(config.seq_len),
            ),
            // Settings that would be ignored are refused: the user meant chat data.
            _ if !config.chat.is_default() => {
                return Err(DataError::config(
                    "chat",
                    format!(
                        "chat settings are given, but the data is {} data, not conversations \
                         (`{{\"{}\": [...]}}` records); remove `data.chat` or point `data.train` \
                         at chat data",
                        kind.name(),
                        config.jsonl.messages_field
                    ),
                ))
            }
            _ => None,
        };
        let spec = BuildSpec {
            kind,
            tokenizer,
            jsonl: &config.jsonl,
            csv: csv.as_ref().map(|(c, t, v)| (*c, t, v)),
            chat: chat.as_ref(),
            cache_dir: &config.cache_dir,
            chunk_bytes,
        };
        let train_origin = config.train.0[0].clone();
        let train_cache = build_or_open(&train_files, &spec)?;
        let whole = |cache: crate::cache::TokenCache| match kind {
            DataKind::LanguageModel => SplitData::Stream(cache.tokens()),
            _ => {
                let n = cache.num_examples() as u32;
                SplitData::Examples(ExampleSet::new(cache, (0..n).collect()))
            }
        };
        let (train, validation, validation_origin) = match &config.validation {
            Validation::None => (whole(train_cache), None, train_origin.clone()),
            Validation::Fraction(f) => {
                let (t, v) = split_fraction(train_cache, kind, *f, config.seed, &train_origin)?;
                (t, Some(v), train_origin.clone())
            }
            Validation::Paths(paths) => {
                let files = resolve(paths, config.format)?;
                let vkind = detect_kind(&files, &config.jsonl)?;
                if vkind != kind {
                    return Err(DataError::MixedKinds {
                        path: files[0].path.clone(),
                        kind: vkind.name().into(),
                        expected: kind.name().into(),
                        first: train_files[0].path.clone(),
                    });
                }
                let cache = build_or_open(&files, &spec)?;
                (whole(train_cache), Some(whole(cache)), paths.0[0].clone())
            }
        };
        Ok(Dataset {
            kind,
            seq_len: config.seq_len,
            shuffle: config.shuffle,
            seed: config.seed,
            packing: config.packing,
            pad: tokenizer.eot_token(),
            train_origin,
            validation_origin,
            train,
            validation,
            verbalizer: csv.map(|c| c.2),
            chat_template: chat.as_ref().map(|t| t.source().to_string()),
        })
    }

    /// Chat data: the text of the chat template its conversations were rendered with.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// What the data is for.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// Tokens in the training split (prompt and completion tokens for examples).
    pub fn num_train_tokens(&self) -> usize {
        self.train.num_tokens()
    }

    /// Examples in the training split (0 for language-model data).
    pub fn num_train_examples(&self) -> usize {
        match &self.train {
            SplitData::Stream(_) => 0,
            SplitData::Examples(e) => e.len(),
        }
    }

    /// The training loader: shuffled if the config says so.
    pub fn train_loader(&self, batch_size: usize) -> Result<DataLoader, DataError> {
        let seed = self.shuffle.then_some(self.seed);
        self.loader(
            &self.train,
            batch_size,
            seed,
            &self.train_origin,
            "training split",
        )
    }

    /// The validation loader (always in order), or None without validation data.
    pub fn validation_loader(&self, batch_size: usize) -> Result<Option<DataLoader>, DataError> {
        match &self.validation {
            None => Ok(None),
            Some(v) => self
                .loader(
                    v,
                    batch_size,
                    None,
                    &self.validation_origin,
                    "validation split",
                )
                .map(Some),
        }
    }

    fn loader(
        &self,
        data: &SplitData,
        batch: usize,
        seed: Option<u64>,
        origin: &std::path::Path,
        what: &str,
    ) -> Result<DataLoader, DataError> {
        match data {
            SplitData::Stream(tokens) => {
                let order = seed.map_or(WindowOrder::Sequential, |seed| WindowOrder::Shuffled {
                    seed,
                });
                let w = LmWindows::new(
                    tokens.clone(),
                    batch,
                    self.seq_len,
                    order,
                    origin.to_path_buf(),
                    what,
                )?;
                Ok(DataLoader::from_windows(w))
            }
            SplitData::Examples(set) => {
                let e = ExampleBatches::new(set.clone(), batch, self.seq_len, self.pad, seed)?
                    .packed(self.packing);
                Ok(DataLoader::from_examples(e))
            }
        }
    }

    /// For classification data: the examples of a split with their candidate label words.
    pub fn classification(&self, split: SplitName) -> Option<ClassificationSet> {
        let data = match split {
            SplitName::Train => Some(&self.train),
            SplitName::Validation => self.validation.as_ref(),
        };
        match (data, &self.verbalizer) {
            (Some(SplitData::Examples(set)), Some(v)) => {
                Some(ClassificationSet::new(set.clone(), v.clone(), self.pad))
            }
            _ => None,
        }
    }
}

/// Holds out `fraction` of the data: the tail of a token stream (nanoGPT's split), or a
/// seeded choice of examples (kept in file order within each split).
fn split_fraction(
    cache: crate::cache::TokenCache,
    kind: DataKind,
    fraction: f64,
    seed: u64,
    origin: &std::path::Path,
) -> Result<(SplitData, SplitData), DataError> {
    let too_few = |what: &'static str, n: usize| DataError::SplitEmpty {
        path: origin.to_path_buf(),
        what,
        count: n as u64,
        fraction,
        empty: if ((n as f64) * fraction).round() as usize == 0 {
            "validation"
        } else {
            "training"
        },
    };
    if kind == DataKind::LanguageModel {
        let tokens = cache.tokens();
        let n = tokens.len();
        let n_val = ((n as f64) * fraction).round() as usize;
        if n_val == 0 || n_val == n {
            return Err(too_few("tokens", n));
        }
        let cut = n - n_val;
        return Ok((
            SplitData::Stream(tokens.slice(0..cut)),
            SplitData::Stream(tokens.slice(cut..n)),
        ));
    }
    let n = cache.num_examples();
    let n_val = ((n as f64) * fraction).round() as usize;
    if n_val == 0 || n_val == n {
        return Err(too_few("examples", n));
    }
    let perm = permutation(n, seed, SPLIT_STREAM);
    let mut val: Vec<u32> = perm[..n_val].to_vec();
    let mut train: Vec<u32> = perm[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((
        SplitData::Examples(ExampleSet::new(cache.clone(), train)),
        SplitData::Examples(ExampleSet::new(cache, val)),
    ))
}
