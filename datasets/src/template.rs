//! Prompt templates (`"Line: {sentence}\nAuthor:"`) and verbalizers (label -> label word) for
//! GLUE-style classification with a GPT model.

use std::collections::BTreeMap;

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// A parsed template: literal text and column placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

impl Template {
    /// Parses `{name}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Template, DataError> {
        let bad = |msg: String| DataError::config("csv.template", msg);
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => {
                                return Err(bad(format!("unclosed `{{` at character {at}")))
                            }
                            Some((_, ch)) => name.push(ch),
                        }
                    }
                    if name.trim().is_empty() {
                        return Err(bad(format!("empty placeholder `{{}}` at character {at}")));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(name.trim().to_string()));
                }
                '}' => return Err(bad(format!("stray `}}` at character {at}; write `}}}}`"))),
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(bad("names no column; add e.g. `{sentence}`".into()));
        }
        Ok(Template { parts })
    }

    /// Column names the template uses, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let Part::Column(c) = p {
                if !out.contains(&c.as_str()) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Fills the template; `value(name)` gives a column's text.
    pub fn render<'a>(&self, mut value: impl FnMut(&str) -> &'a str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Column(c) => out.push_str(value(c)),
            }
        }
        out
    }
}

/// Labels, their words and the words' tokens, in label order (labels sorted as strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verbalizer {
    /// Labels as written in the data.
    pub labels: Vec<String>,
    /// The label words (completions).
    pub words: Vec<String>,
    /// Tokens of each label word, encoded on their own.
    pub tokens: Vec<Vec<u32>>,
}

impl Verbalizer {
    /// Tokenizes every label word; one that tokenizes to nothing is an error.
    pub fn new(map: &BTreeMap<String, String>, tok: &dyn Tokenizer) -> Result<Self, DataError> {
        let mut v = Verbalizer {
            labels: vec![],
            words: vec![],
            tokens: vec![],
        };
        for (label, word) in map {
            let ids = tok.try_encode(word)?;
            if ids.is_empty() {
                return Err(DataError::EmptyLabelWord {
                    label: label.clone(),
                    word: word.clone(),
                });
            }
            v.labels.push(label.clone());
            v.words.push(word.clone());
            v.tokens.push(ids);
        }
        Ok(v)
    }

    /// Index of `label` (surrounding whitespace ignored).
    pub fn index(&self, label: &str) -> Option<usize> {
        let label = label.trim();
        self.labels.iter().position(|l| l == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_with_escapes() {
        let t = Template::parse("Q: {sentence1} {{x}} / {sentence2}\nA:").unwrap();
        assert_eq!(t.columns(), vec!["sentence1", "sentence2"]);
        let s = t.render(|c| if c == "sentence1" { "one" } else { "two" });
        assert_eq!(s, "Q: one {x} / two\nA:");
    }

    #[test]
    fn rejects_broken_templates() {
        for bad in ["no placeholder", "{open", "a } b", "{}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
