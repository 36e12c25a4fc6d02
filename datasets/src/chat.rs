//! Chat data: conversations (`{"messages": [{"role": "user", "content": "..."}, ...]}`, the
//! records TRL's SFT trainer reads) rendered to text with a Jinja chat template, as Hugging
//! Face's `apply_chat_template` renders them: `trim_blocks` and `lstrip_blocks` on, the variables
//! `messages`, `add_generation_prompt` (false for training), `bos_token`, `eos_token`, `tools` and
//! `documents` (none), the function `raise_exception(message)`, Python's string and dict methods
//! (`.strip()`, `.items()`, minijinja-contrib's `pycompat`); an undefined value is an error
//! (minijinja's strict mode), not an empty string.
//!
//! Assistant spans: the conversation is rendered prefix by prefix, `messages[..i]` and then
//! `messages[..=i]`; each rendering must begin with the one before ("prefix-stable"), and the
//! text that message `i` adds is its span. An assistant message's span carries the loss, its
//! closing tag or end-of-text included (so the model learns to stop), except the header that the
//! generation prompt (`add_generation_prompt=true` after `messages[..i]`) writes, which inference
//! supplies. The whole rendering is encoded at once, as `apply_chat_template` encodes it, and a
//! token carries the loss when a byte it stands for is in a span that does. With `loss: "all"` the
//! conversation is rendered once and every token carries the loss. For training data the prefixes
//! are rendered only as far as a row of `seq_len` tokens can reach
//! ([`ChatTemplate::with_window`]), so a conversation costs one rendering of its whole plus the
//! prefixes a row covers, not one rendering per message.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior, Value};

use crate::error::DataError;
use crate::hash::Fnv64;
use crate::input::{read_text_limited, CONFIG_LIMIT};
use crate::spec::{ChatConfig, ChatLoss, ChatTemplateSource};
use crate::tokenizer::Tokenizer;

/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// ChatML, as Hugging Face's docs and many instruction-tuned checkpoints (Qwen, OpenHermes)
/// write it.
pub const CHATML: &str =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
     + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
     '<|im_start|>assistant\\n' }}{% endif %}";

/// The variables a template is given besides the built-in functions.
const VARIABLES: [&str; 6] = [
    "messages",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "tools",
    "documents",
];

/// The most template instructions (minijinja's fuel) one rendering may run. Real chat
/// templates run a few hundred per message (zephyr's renders 20,000 messages within it:
/// `datasets/tests/it/chat.rs`), while a template that loops without end fails within about a
/// second.
pub const TEMPLATE_FUEL: u64 = 50_000_000;

/// A compiled chat template and what rendering and tokenizing with it needs.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from; also its name in minijinja's messages (`(in NAME:LINE)`).
    origin: String,
    /// The template's text, written into the `tokenizer_config.json` of checkpoints.
    source: String,
    hash: u64,
    bos: String,
    eos: String,
    loss: ChatLoss,
    /// Tokens a training row holds after a conversation's prompt (`seq_len`): the masks of
    /// later tokens, which no row reaches, are not worked out ([`ChatTemplate::with_window`]).
    window: Option<usize>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.origin)
    }
}

impl ChatTemplate {
    /// The template `cfg` names: built in, a file, or the checkpoint folder's (`checkpoint`).
    pub fn resolve(
        cfg: &ChatConfig,
        checkpoint: Option<&Path>,
        tok: &dyn Tokenizer,
    ) -> Result<ChatTemplate, DataError> {
        let eot = tok.eot_text();
        match &cfg.template {
            ChatTemplateSource::Chatml => Self::new(
                CHATML.into(),
                "built-in chatml template".into(),
                (eot.clone(), eot),
                cfg.loss,
            ),
            ChatTemplateSource::Path(path) => {
                let source = read_text_limited(path, CONFIG_LIMIT, "chat template")
                    .map_err(|e| DataError::io(path, e))?;
                Self::new(
                    source,
                    path.display().to_string(),
                    (eot.clone(), eot),
                    cfg.loss,
                )
            }
            ChatTemplateSource::Checkpoint => {
                let Some(dir) = checkpoint else {
                    return Err(DataError::config(
                        "chat.template",
                        "chat data needs a chat template, and the model has no checkpoint \
                         folder (`model.checkpoint`) to take one from; set `data.chat.template` \
                         to \"chatml\" or to {\"path\": \"template.jinja\"}",
                    ));
                };
                let (source, origin, bos) = from_checkpoint(dir)?;
                Self::new(source, origin, (bos.unwrap_or(eot.clone()), eot), cfg.loss)
            }
        }
    }

    /// Compiles `source`; `origin` names it in errors. `(bos, eos)`: the token strings the
    /// template is given.
    pub fn new(
        source: String,
        origin: String,
        (bos, eos): (String, String),
        loss: ChatLoss,
    ) -> Result<ChatTemplate, DataError> {
        let mut env = Environment::new();
        // As transformers' `_compile_jinja_template`: trim_blocks, lstrip_blocks,
        // raise_exception; strict undefined instead of its silent default.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // A template that loops (or recurses) without end is an error, not a job that never
        // finishes preparing its data.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, _> {
            Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("the template raised an exception: {message}"),
            ))
        });
        let hash = Fnv64::new().write(source.as_bytes()).finish();
        env.add_template_owned(origin.clone(), source.clone())
            .map_err(|e| DataError::ChatTemplate {
                origin: origin.clone(),
                message: format!("the chat template does not parse: {e}"),
            })?;
        Ok(ChatTemplate {
            env,
            origin,
            source,
            hash,
            bos,
            eos,
            loss,
            window: None,
        })
    }

    /// This template for rows of `seq_len` tokens. A row holds at most `seq_len` tokens after
    /// a conversation's prompt (the tokens before the first that carries the loss; `Batch`'s
    /// `set_masked_row`), so the assistant spans are worked out only up to there: the rendering
    /// of every prefix, `messages[..=i]`, which made a conversation's cost quadratic in its
    /// length, stops at the first message that begins after the last token a row can hold. The
    /// masks of the tokens after it are 0 (no row reads them); the tokens are all kept.
    pub fn with_window(mut self, seq_len: usize) -> Self {
        self.window = Some(seq_len);
        self
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What decides the tokens besides the tokenizer: the template's text (hashed), `loss`, and
    /// how the rendering is encoded (`whole`; caches before it encoded message by message).
    pub(crate) fn cache_options(&self) -> String {
        let window = self
            .window
            .map_or(String::new(), |w| format!(" window={w}"));
        format!(
            "template={:016x} loss={:?} encode=whole{window}",
            self.hash, self.loss
        )
    }

    /// `messages` rendered, as training (`add_generation_prompt` false) or inference sees them.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template(&self.origin).expect("added in new");
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| {
            let mut message = format!("chat template {}: {e}", self.origin);
            if e.kind() == ErrorKind::OutOfFuel {
                message += &format!(
                    " (it ran more than {TEMPLATE_FUEL} template instructions for one \
                     conversation of {} messages: a loop that does not end?)",
                    messages.len()
                );
            }
            if e.kind() == ErrorKind::UndefinedError {
                let mut unknown: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| {
                        !VARIABLES.contains(&v.as_str()) && !self.env.globals().any(|g| g.0 == v)
                    })
                    .collect();
                unknown.sort();
                if !unknown.is_empty() {
                    message += &format!(
                        "; it uses variables that are not set: {} (set are {})",
                        unknown.join(", "),
                        VARIABLES.join(", ")
                    );
                }
            }
            message
        })
    }

    /// The rendered conversation cut into spans, each with whether it carries the loss; they
    /// join to the rendering of the whole conversation.
    pub fn spans(&self, messages: &[serde_json::Value]) -> Result<Vec<(String, bool)>, String> {
        if self.loss == ChatLoss::All {
            return Ok(vec![(self.render(messages, false)?, true)]);
        }
        self.spans_until(messages, None, |_| None)
    }

    /// [`ChatTemplate::spans`], rendering prefixes only until the text reaches the byte that
    /// `limit` returns for the byte where the first span with the loss begins (`None`: all).
    /// `full`, the whole conversation's rendering when the caller has it, gets the text after
    /// the last prefix rendered as one span without the loss.
    fn spans_until(
        &self,
        messages: &[serde_json::Value],
        full: Option<&str>,
        mut limit: impl FnMut(usize) -> Option<usize>,
    ) -> Result<Vec<(String, bool)>, String> {
        let mut spans = Vec::with_capacity(messages.len() + 1);
        let mut before = String::new(); // the rendering of messages[..i]
        let mut stop_at: Option<usize> = None;
        for i in 0..messages.len() {
            if let (Some(stop), Some(full)) = (stop_at, full) {
                if before.len() >= stop {
                    // No row reaches the messages from here on.
                    if !full.starts_with(&before) {
                        return Err(self.not_prefix_stable(i, &before, full));
                    }
                    spans.push((full[before.len()..].to_string(), false));
                    return Ok(spans);
                }
            }
            let upto = self.render(&messages[..=i], false)?;
            if !upto.starts_with(&before) {
                return Err(self.not_prefix_stable(i, &before, &upto));
            }
            let added = &upto[before.len()..];
            if messages[i]["role"] == "assistant" {
                // The generation prompt is the header inference writes before a reply; when it
                // is where this message begins, it is given, not learned. A template that
                // fails on it (some index messages[0]) has no such header.
                let header = match self.render(&messages[..i], true) {
                    Ok(g) if g.starts_with(&before) && upto.starts_with(&g) => g.len(),
                    _ => before.len(),
                } - before.len();
                if stop_at.is_none() && header < added.len() {
                    stop_at = limit(before.len() + header);
                }
                spans.push((added[..header].to_string(), false));
                spans.push((added[header..].to_string(), true));
            } else {
                spans.push((added.to_string(), false));
            }
            before = upto;
        }
        if let Some(full) = full {
            // Every message rendered: the whole rendering is the last prefix.
            if full != before {
                return Err(self.not_prefix_stable(messages.len(), &before, full));
            }
        }
        Ok(spans)
    }

    fn not_prefix_stable(&self, i: usize, before: &str, upto: &str) -> String {
        let at = before
            .char_indices()
            .zip(upto.chars())
            .find(|((_, a), b)| a != b)
            .map_or(before.len().min(upto.len()), |((k, _), _)| k);
        let snippet = |s: &str| s[at..].chars().take(30).collect::<String>();
        format!(
            "chat template {} is not prefix-stable: the conversation rendered up to \
             messages[{i}] does not begin with its rendering up to messages[{}] (they part at \
             byte {at}: {:?} vs {:?}), so the text each message adds cannot be found; use a \
             template that renders each message without looking at the ones after it, or set \
             `data.chat.loss` to \"all\"",
            self.origin,
            i.saturating_sub(1),
            snippet(before),
            snippet(upto),
        )
    }

    /// The conversation's tokens and loss mask (1: the token carries the loss; the first token,
    /// no target, never does). The rendering is encoded whole, as `apply_chat_template` encodes
    /// it; a token has the loss when any byte it stands for is in a span that has (the rule of
    /// `transformers`' `return_assistant_tokens_mask`: a token that begins in a reply's header
    /// and ends in the reply has it; one that stands for no bytes has not).
    pub fn tokenize(
        &self,
        messages: &[serde_json::Value],
        tok: &dyn Tokenizer,
    ) -> Result<(Vec<u32>, Vec<u8>), String> {
        let text = self.render(messages, false)?;
        let encoded = tok.encode_rendered(&text).map_err(|e| e.to_string())?;
        let spans = match self.loss {
            ChatLoss::All => vec![(text.clone(), true)],
            // With a window: spans up to the end of the last token a row can hold, the
            // `window`-th token from the first one that carries the loss.
            ChatLoss::Assistant => self.spans_until(messages, Some(&text), |first_learned| {
                let window = self.window?;
                // The first token with the loss (the ids' byte ranges are contiguous, so it is
                // the first that ends after the span's first byte): the row's prompt ends there.
                // Token 0 never carries the loss (no target); the prompt then ends at a later
                // one: no early stop.
                let first = encoded.partition_point(|(_, bytes)| bytes.end <= first_learned);
                if first == 0 {
                    return None;
                }
                let last = (first + window).min(encoded.len());
                Some(match last {
                    0 => 0,
                    n => encoded[n - 1].1.end,
                })
            })?,
        };
        let mut learned = Vec::new();
        let mut at = 0;
        for (piece, loss) in &spans {
            if *loss && !piece.is_empty() {
                learned.push(at..at + piece.len());
            }
            at += piece.len();
        }
        let (mut tokens, mut mask) = (Vec::with_capacity(encoded.len()), Vec::new());
        for (id, bytes) in encoded {
            let loss = learned
                .iter()
                .any(|l| bytes.start < l.end && bytes.end > l.start);
            tokens.push(id);
            mask.push(u8::from(loss));
        }
        if let Some(first) = mask.first_mut() {
            *first = 0;
        }
        Ok((tokens, mask))
    }
}

/// A checkpoint folder's template, its origin and the `bos_token` of its
/// `tokenizer_config.json`: `chat_template.jinja` (newer transformers save it there), else the
/// `chat_template` key of `tokenizer_config.json` (a string, or a list of `{name, template}`
/// whose `default` is taken).
fn from_checkpoint(dir: &Path) -> Result<(String, String, Option<String>), DataError> {
    let config_path = dir.join("tokenizer_config.json");
    let bad = |message: String| DataError::ChatTemplate {
        origin: config_path.display().to_string(),
        message,
    };
    // `exists`, not `is_file`: a FIFO or a link to a device is refused, not taken as absent.
    let config: Option<serde_json::Value> = if config_path.exists() {
        let text = read_text_limited(&config_path, CONFIG_LIMIT, "tokenizer config")
            .map_err(|e| DataError::io(&config_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?)
    } else {
        None
    };
    let bos = config.as_ref().and_then(|c| match c.get("bos_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => v.get("content")?.as_str().map(str::to_string),
        None => None,
    });
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let source = read_text_limited(&jinja, CONFIG_LIMIT, "chat template")
            .map_err(|e| DataError::io(&jinja, e))?;
        return Ok((source, jinja.display().to_string(), bos));
    }
    let origin = format!("{} key `chat_template`", config_path.display());
    match config.as_ref().and_then(|c| c.get("chat_template")) {
        Some(serde_json::Value::String(s)) => Ok((s.clone(), origin, bos)),
        Some(serde_json::Value::Array(list)) => {
            let default = list.iter().find(|t| t["name"] == "default");
            match default.and_then(|t| t["template"].as_str()) {
                Some(s) => Ok((s.to_string(), origin, bos)),
                None => Err(bad(
                    "`chat_template` is a list without a `default` template; set \
                     `data.chat.template` to {\"path\": ...} with the one to use"
                        .into(),
                )),
            }
        }
        Some(other) => Err(bad(format!(
            "`chat_template` must be a string, found {}",
            crate::json::json_type_name(other)
        ))),
        None => Err(DataError::config(
            "chat.template",
            format!(
                "chat data needs a chat template, and the checkpoint folder {} has none (no \
                 chat_template.jinja, no `chat_template` in tokenizer_config.json); set \
                 `data.chat.template` to \"chatml\" or to {{\"path\": \"template.jinja\"}}",
                dir.display()
            ),
        )),
    }
}
