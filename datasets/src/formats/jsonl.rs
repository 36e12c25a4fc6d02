//! JSONL: one JSON object a line, `{"text": ...}` (a document),
//! `{"prompt": ..., "completion": ...}` (an example; the completion is followed by end-of-text
//! and carries the loss) or `{"messages": [{"role": ..., "content": ...}, ...]}` (a
//! conversation, rendered with a chat template, `crate::chat`). Other fields are ignored; blank
//! lines are skipped. The first record decides which kind a file holds; a later record of
//! another kind is an error, as is a record with the fields of two kinds.

use std::io::{BufRead, BufReader};
use std::path::Path;

use rayon::prelude::*;
use serde_json::{Map, Value};

use super::strip_bom;
use crate::cache::CacheWriter;
use crate::chat::{ChatTemplate, ROLES};
use crate::error::DataError;
use crate::json::json_type_name;
use crate::kind::DataKind;
use crate::spec::JsonlConfig;
use crate::tokenizer::Tokenizer;

/// A record's tokens.
enum Tokenized {
    Document(Vec<u32>),
    Pair(Vec<u32>, Vec<u32>),
    /// A conversation's tokens and loss mask.
    Chat(Vec<u32>, Vec<u8>),
}

/// Records tokenized in parallel per round.
const RECORDS_PER_ROUND: usize = 4096;

enum Record {
    Text(String),
    Pair(String, String),
    /// The messages, each checked to be an object with a known `role` and string `content`.
    Chat(Vec<Value>),
}

/// Iterates over the non-blank lines of a JSONL file as parsed records with line numbers.
struct Lines<'a> {
    path: &'a Path,
    cfg: &'a JsonlConfig,
    reader: BufReader<std::fs::File>,
    line: u64,
    offset: u64,
    buf: Vec<u8>,
}

impl<'a> Lines<'a> {
    fn open(path: &'a Path, cfg: &'a JsonlConfig) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = BufReader::with_capacity(super::READ_BLOCK, file);
        Ok(Lines {
            path,
            cfg,
            reader,
            line: 0,
            offset: 0,
            buf: Vec::new(),
        })
    }

    fn bad(&self, message: String) -> DataError {
        DataError::BadRecord {
            path: self.path.to_path_buf(),
            line: self.line,
            message,
        }
    }

    /// The next record and its line number, or None at the end of the file.
    fn next_record(&mut self) -> Result<Option<(u64, Record)>, DataError> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| DataError::io(self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let line_start = self.offset;
            self.offset += n as u64;
            let skip = if self.line == 1 {
                strip_bom(&self.buf)
            } else {
                0
            };
            let text =
                std::str::from_utf8(&self.buf[skip..]).map_err(|e| DataError::InvalidUtf8 {
                    path: self.path.to_path_buf(),
                    line: self.line,
                    offset: line_start + (skip + e.valid_up_to()) as u64,
                })?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let object: Map<String, Value> =
                serde_json::from_str(text).map_err(|e| DataError::MalformedJson {
                    path: self.path.to_path_buf(),
                    line: self.line,
                    message: e.to_string(),
                })?;
            return self.record(object).map(|r| Some((self.line, r)));
        }
    }

    fn record(&self, object: Map<String, Value>) -> Result<Record, DataError> {
        let cfg = self.cfg;
        let string = |name: &str| -> Result<Option<String>, DataError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(self.bad(format!(
                    "field `{name}` must be a string, found {}",
                    json_type_name(other)
                ))),
            }
        };
        if let Some(messages) = object.get(&cfg.messages_field).filter(|v| !v.is_null()) {
            let other = [&cfg.text_field, &cfg.prompt_field, &cfg.completion_field]
                .into_iter()
                .find(|f| object.get(f.as_str()).is_some_and(|v| !v.is_null()));
            if let Some(other) = other {
                return Err(self.bad(format!(
                    "a record mixing kinds: it has `{}` (a conversation) and `{other}`; give                      each record the fields of one kind",
                    cfg.messages_field
                )));
            }
            return self.messages(messages).map(Record::Chat);
        }
        if let Some(text) = string(&cfg.text_field)? {
            return Ok(Record::Text(text));
        }
        match (string(&cfg.prompt_field)?, string(&cfg.completion_field)?) {
            (Some(prompt), Some(completion)) => {
                if completion.is_empty() {
                    return Err(self.bad(format!(
                        "field `{}` is empty: nothing to learn",
                        cfg.completion_field
                    )));
                }
                Ok(Record::Pair(prompt, completion))
            }
            _ => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                Err(self.bad(format!(
                    "expected a `{}` field, or `{}` and `{}` fields; found {{{}}}",
                    cfg.text_field,
                    cfg.prompt_field,
                    cfg.completion_field,
                    keys.join(", ")
                )))
            }
        }
    }
}

impl Lines<'_> {
    /// Checks a conversation: a non-empty list of `{"role", "content"}` objects.
    fn messages(&self, messages: &Value) -> Result<Vec<Value>, DataError> {
        let field = &self.cfg.messages_field;
        let Value::Array(list) = messages else {
            return Err(self.bad(format!(
                "field `{field}` must be a list of messages, found {}",
                json_type_name(messages)
            )));
        };
        if list.is_empty() {
            return Err(self.bad(format!(
                "field `{field}` is empty: a conversation needs at least one message"
            )));
        }
        for (k, m) in list.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(self.bad(format!(
                    "{field}[{k}] must be an object with `role` and `content`, found {}",
                    json_type_name(m)
                )));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r,
                Some(Value::String(r)) => {
                    return Err(self.bad(format!(
                        "{field}[{k}]: unknown role {r:?} (expected {})",
                        ROLES.join(", ")
                    )))
                }
                None => return Err(self.bad(format!("{field}[{k}] has no `role`"))),
                Some(other) => {
                    return Err(self.bad(format!(
                        "{field}[{k}]: `role` must be a string, found {}",
                        json_type_name(other)
                    )))
                }
            };
            match m.get("content") {
                Some(Value::String(_)) => {}
                None => {
                    return Err(self.bad(format!(
                        "{field}[{k}] (role {role}) has no `content`; give its text as a string"
                    )))
                }
                Some(other) => {
                    return Err(self.bad(format!(
                        "{field}[{k}] (role {role}): `content` must be a string, found {}                          (lists of content parts are not supported)",
                        json_type_name(other)
                    )))
                }
            }
        }
        Ok(list.clone())
    }
}

fn kind_of(r: &Record) -> DataKind {
    match r {
        Record::Text(_) => DataKind::LanguageModel,
        Record::Pair(..) => DataKind::PromptCompletion,
        Record::Chat(_) => DataKind::Chat,
    }
}

/// The kind of the first record, or None for a file without records.
pub(crate) fn peek_kind(path: &Path, cfg: &JsonlConfig) -> Result<Option<DataKind>, DataError> {
    Ok(Lines::open(path, cfg)?
        .next_record()?
        .map(|(_, r)| kind_of(&r)))
}

/// Tokenizes every record of a file of `kind` (conversations with `chat`). Returns the number
/// of records.
pub(crate) fn tokenize_file(
    path: &Path,
    cfg: &JsonlConfig,
    kind: DataKind,
    chat: Option<&ChatTemplate>,
    tok: &dyn Tokenizer,
    out: &mut CacheWriter,
) -> Result<u64, DataError> {
    let mut lines = Lines::open(path, cfg)?;
    let mut records = 0u64;
    let eot = tok.eot_token();
    let bos = tok.bos_prefix();
    loop {
        let mut round = Vec::with_capacity(RECORDS_PER_ROUND);
        while round.len() < RECORDS_PER_ROUND {
            match lines.next_record()? {
                None => break,
                Some((line, r)) if kind_of(&r) != kind => {
                    return Err(DataError::BadRecord {
                        path: path.to_path_buf(),
                        line,
                        message: format!(
                            "a {} record in a file whose first record is {}",
                            kind_of(&r).name(),
                            kind.name()
                        ),
                    })
                }
                Some(r) => round.push(r),
            }
        }
        if round.is_empty() {
            return Ok(records);
        }
        let tokenized: Vec<Result<Tokenized, DataError>> = round
            .par_iter()
            .map(|(line, r)| {
                let bad = |message: String| DataError::BadRecord {
                    path: path.to_path_buf(),
                    line: *line,
                    message,
                };
                let enc = |s: &str| tok.try_encode(s).map_err(|e| bad(e.to_string()));
                // A document or a prompt begins with the tokenizer's beginning-of-sequence ids,
                // if it has any (an empty text is no document: it stays empty).
                let begun = |s: &str| -> Result<Vec<u32>, DataError> {
                    let ids = enc(s)?;
                    Ok(match ids.is_empty() {
                        true => ids,
                        false => [bos.as_slice(), &ids].concat(),
                    })
                };
                Ok(match r {
                    Record::Text(t) => Tokenized::Document(begun(t)?),
                    Record::Pair(p, c) => Tokenized::Pair(begun(p)?, enc(c)?),
                    Record::Chat(messages) => {
                        let chat = chat.expect("chat data is opened with a template");
                        let (tokens, mask) = chat.tokenize(messages, tok).map_err(bad)?;
                        if !mask.contains(&1) {
                            return Err(bad(format!(
                                "the conversation has no token to learn: no assistant message                                  adds text under the chat template {} (set `data.chat.loss`                                  to \"all\" to learn every token)",
                                chat.origin()
                            )));
                        }
                        Tokenized::Chat(tokens, mask)
                    }
                })
            })
            .collect();
        for item in tokenized {
            match item? {
                Tokenized::Document(doc) if doc.is_empty() => continue, // "" is no document
                Tokenized::Document(mut doc) => {
                    doc.push(eot);
                    out.push_tokens(&doc)?;
                }
                Tokenized::Pair(prompt, mut completion) => {
                    completion.push(eot);
                    out.push_example(&prompt, &completion, None)?;
                }
                Tokenized::Chat(tokens, mask) => out.push_masked_example(&tokens, &mask)?,
            }
            records += 1;
        }
    }
}
