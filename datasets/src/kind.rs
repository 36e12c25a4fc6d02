//! What a corpus is for. A leaf module: the cache header, the source scan and the format
//! readers all name a kind, so it depends on none of them.

use serde::{Deserialize, Serialize};

/// What a corpus is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Documents joined with end-of-text; batches are windows of the token stream.
    LanguageModel,
    /// Prompt + completion pairs; the loss is taken on the completion only.
    PromptCompletion,
    /// Conversations rendered with a chat template; the loss is taken on assistant turns
    /// (or on every token), as a per-token mask.
    Chat,
    /// Classification rows turned into prompt + label word; scored by label likelihood.
    Classification,
}

impl DataKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DataKind::LanguageModel => "language-model text",
            DataKind::PromptCompletion => "prompt/completion",
            DataKind::Classification => "classification",
            DataKind::Chat => "chat",
        }
    }
}
