//! Data for fp8-trainer: tokenizers, corpora in the formats fine-tuning jobs bring (plain text,
//! JSONL text, prompt/completion or chat conversations, GLUE-style CSV/TSV classification),
//! tokenized caches that are memory-mapped, and deterministic, resumable batching (llm.c-style
//! language-model windows, padded example batches with loss masks).
//!
//! Plain Rust in and out (`Vec<u32>`, shapes `[B, T]`); the trainer turns batches into tensors.
//! See `datasets/README.md` for the configuration and an example.
//!
//! ```text
//! cargo test -p datasets && cargo bench -p datasets --bench throughput
//! ```

pub mod atomic;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod classification;
mod corpus;
pub mod dataset;
pub mod error;
pub mod examples;
mod formats;
pub mod hash;
pub mod input;
mod json;
mod kind;
pub mod loader;
mod rng;
pub mod sources;
pub mod spec;
pub mod stream;
pub mod template;
pub mod tokenizer;
pub mod windows;

pub use batch::Batch;
pub use chat::ChatTemplate;
pub use classification::{ClassificationExample, ClassificationSet, ScoringBatch};
pub use dataset::{Dataset, SplitName};
pub use error::{CacheError, DataError, TokenizerError};
pub use examples::Padding;
pub use formats::text::encode_in_chunks;
pub use json::json_type_name;
pub use kind::DataKind;
pub use loader::{DataLoader, LoaderState};
pub use spec::{
    ChatConfig, ChatLoss, ChatTemplateSource, CsvConfig, DataConfig, DataFormat, JsonlConfig,
    Paths, Validation,
};
pub use stream::TokenStream;
pub use tokenizer::{
    load_tokenizer, tokenizer_from_checkpoint_dir, ByteTokenizer, CheckpointFile, Gpt2Tokenizer,
    HfTokenizer, Tokenizer, TokenizerSpec, NATIVE_KEY, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
pub use windows::{LmWindows, WindowOrder};
