//! Chat data (`{"messages": [...]}` records): rendering with ChatML and with Hugging Face style
//! templates against hand-written text, the loss on assistant turns only (their closing tag
//! included, the header the generation prompt writes excluded) or on every token, cutting an
//! over-long conversation, the cache, and every error naming its file and line or field.

use std::path::{Path, PathBuf};

use datasets::{
    ByteTokenizer, ChatLoss, ChatTemplateSource, DataConfig, DataError, DataKind, Dataset,
    Gpt2Tokenizer, HfTokenizer, Tokenizer,
};
use serde_json::json;

use crate::common;
use crate::common::Scratch;

/// The bytes tokenizer's end-of-text id, written `<EOT>` in the expected texts.
const EOT: u32 = 256;

/// HuggingFaceH4/zephyr-7b-beta's `chat_template`, as in its tokenizer_config.json: block tags
/// on lines of their own, which `trim_blocks` / `lstrip_blocks` remove.
const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

/// The template `transformers` used for GPT-2 when a tokenizer had none (its old
/// `default_chat_template`): each message's content followed by end-of-text.
const GPT2_DEFAULT: &str =
    "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}";

fn conversation() -> serde_json::Value {
    json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."}
    ]})
}

fn jsonl(records: &[serde_json::Value]) -> String {
    records.iter().map(|r| r.to_string() + "\n").collect()
}

fn text(ids: &[u32]) -> String {
    ids.iter()
        .map(|&t| {
            if t == EOT {
                "<EOT>".to_string()
            } else {
                char::from(t as u8).to_string()
            }
        })
        .collect()
}

/// Row 0 of the first training batch: the token sequence it holds, and the targets that carry
/// the loss, in order.
fn first_row(ds: &Dataset) -> (Vec<u32>, Vec<u32>) {
    let b = ds.train_loader(1).unwrap().next_batch();
    let (attn, mask) = (b.attention_mask.unwrap(), b.loss_mask.unwrap());
    let n = attn.iter().filter(|&&a| a).count();
    let mut seq = b.inputs[..n].to_vec();
    seq.push(b.targets[n - 1]);
    let learned = (0..b.seq)
        .filter(|&j| mask[j] > 0.0)
        .map(|j| b.targets[j])
        .collect();
    (seq, learned)
}

fn chat_config(s: &Scratch, data: &Path, template: ChatTemplateSource) -> DataConfig {
    let mut cfg = s.config(data.to_path_buf(), 256);
    cfg.chat.template = template;
    cfg
}

#[test]
fn chatml_puts_the_loss_on_assistant_turns_and_their_closing_tags() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    assert_eq!(ds.kind(), DataKind::Chat);
    let (seq, learned) = first_row(&ds);
    assert_eq!(
        text(&seq),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\nBye.<|im_end|>\n"
    );
    // The "<|im_start|>assistant\n" header is the generation prompt: given, not learned.
    assert_eq!(text(&learned), "Hello!<|im_end|>\nBye.<|im_end|>\n");
}

#[test]
fn all_tokens_option_puts_the_loss_on_every_target() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let mut cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    cfg.chat.loss = ChatLoss::All;
    let (seq, learned) = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    assert!(text(&seq).starts_with("<|im_start|>system\nBe brief."));
    assert_eq!(
        learned,
        seq[1..],
        "every token but the first is a target with loss"
    );
}

#[test]
fn hf_template_from_the_checkpoint_folder_by_default() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let checkpoint = s.path("model");
    std::fs::create_dir_all(&checkpoint).unwrap();
    let config = json!({"chat_template": ZEPHYR, "eos_token": "</s>"});
    std::fs::write(checkpoint.join("tokenizer_config.json"), config.to_string()).unwrap();
    let cfg = chat_config(&s, &data, ChatTemplateSource::Checkpoint);
    let ds = Dataset::open_with_checkpoint(&cfg, &ByteTokenizer, Some(&checkpoint)).unwrap();
    let (seq, learned) = first_row(&ds);
    // eos_token is the tokenizer's end-of-text (one token), whatever the file's spelling.
    assert_eq!(
        text(&seq),
        "<|system|>\nBe brief.<EOT>\n<|user|>\nHi<EOT>\n<|assistant|>\nHello!<EOT>\n\
         <|user|>\nBye<EOT>\n<|assistant|>\nBye.<EOT>\n"
    );
    // The generation prompt writes "<|assistant|>\n"; the reply and its end-of-text are learned.
    assert_eq!(text(&learned), "Hello!<EOT>\nBye.<EOT>\n");

    // chat_template.jinja beside it wins (newer transformers save the template there).
    std::fs::write(checkpoint.join("chat_template.jinja"), GPT2_DEFAULT).unwrap();
    let ds = Dataset::open_with_checkpoint(&cfg, &ByteTokenizer, Some(&checkpoint)).unwrap();
    let (seq, _) = first_row(&ds);
    assert_eq!(
        text(&seq),
        "Be brief.<EOT>Hi<EOT>Hello!<EOT>Bye<EOT>Bye.<EOT>"
    );
}

#[test]
fn gpt2_style_template_file_ends_each_turn_with_the_end_of_text_token() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let template = s.write("gpt2.jinja", GPT2_DEFAULT);
    let cfg = chat_config(&s, &data, ChatTemplateSource::Path(template));
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let (seq, learned) = first_row(&Dataset::open(&cfg, &gpt2).unwrap());
    let mut expected = Vec::new();
    for part in ["Be brief.", "Hi", "Hello!", "Bye", "Bye."] {
        expected.extend(gpt2.encode(part));
        expected.push(50256); // <|endoftext|> as its id, not as the text's 7 BPE tokens
    }
    assert_eq!(seq, expected);
    let mut want = gpt2.encode("Hello!");
    want.push(50256);
    want.extend(gpt2.encode("Bye."));
    want.push(50256);
    assert_eq!(learned, want);

    // The same through the shipped tokenizer.json, whose special added token is found by its
    // text (`Tokenizer::special_tokens`).
    let hf =
        HfTokenizer::from_json_file(&common::data_dir().join("gpt2/tokenizer.json"), None).unwrap();
    assert_eq!(hf.eot_text(), "<|endoftext|>");
    let (hf_seq, hf_learned) = first_row(&Dataset::open(&cfg, &hf).unwrap());
    assert_eq!((hf_seq, hf_learned), (expected, want));
}

/// The rendering is encoded whole, as `apply_chat_template` encodes it, so a BPE token may
/// cross from a reply's header into the reply: GPT-2 joins the header's "\n" and the reply's
/// first "\n" into one token, which then carries the loss (as `transformers`'
/// `return_assistant_tokens_mask` marks every token overlapping a reply).
#[test]
fn a_token_that_crosses_into_a_reply_is_encoded_whole_and_carries_the_loss() {
    let s = Scratch::new();
    let record = json!({"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "\n\nHi"}
    ]});
    let data = s.write("chat.jsonl", jsonl(&[record]));
    let cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let (seq, learned) = first_row(&Dataset::open(&cfg, &gpt2).unwrap());
    let header = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant";
    let reply = "\n\n\nHi<|im_end|>\n"; // the header's "\n", then the reply's text
    assert_eq!(seq, gpt2.encode(&format!("{header}{reply}")));
    assert_eq!(
        gpt2.encode(reply)[0],
        gpt2.encode("\n\n")[0],
        "one token, two newlines"
    );
    assert_eq!(learned, gpt2.encode(reply));
}

/// Longer than seq_len + 1: as a prompt/completion example is cut, the tokens before the first
/// loss token (the prompt) lose their start, keeping at least one, then the end goes; the
/// loss stays on the assistant text that remains.
#[test]
fn an_overlong_conversation_is_cut_like_an_example() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let mut cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let full = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
                <|im_start|>assistant\nBye.<|im_end|>\n";
    let spans: Vec<(usize, usize)> = ["Hello!<|im_end|>\n", "Bye.<|im_end|>\n"]
        .iter()
        .map(|t| (full.find(t).unwrap(), full.find(t).unwrap() + t.len()))
        .collect();
    let prompt = spans[0].0; // tokens before the first that carries the loss
                             // (seq_len, the row's first byte): the whole completion fits in 120 with 17 prompt bytes
                             // to spare; in 8 and 60 it does not, and one prompt byte is kept.
    let completion = full.len() - prompt;
    for (seq_len, first) in [(8, prompt - 1), (60, prompt - 1), (120, full.len() - 121)] {
        assert!(completion > 60 && completion < 120);
        cfg.seq_len = seq_len;
        let (seq, learned) = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
        let end = (first + seq_len + 1).min(full.len());
        assert_eq!(text(&seq), full[first..end], "seq_len {seq_len}");
        let learned_expected: String = (first + 1..end)
            .filter(|&k| spans.iter().any(|&(a, b)| (a..b).contains(&k)))
            .map(|k| char::from(full.as_bytes()[k]))
            .collect();
        assert_eq!(text(&learned), learned_expected, "seq_len {seq_len}");
    }
}

#[test]
fn the_cache_keeps_the_mask_and_the_options_choose_the_cache() {
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation(), conversation()]));
    let mut cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let built = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    assert_eq!(s.cache_files().len(), 1);
    let reused = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    assert_eq!(
        built, reused,
        "a reused cache gives the same tokens and mask"
    );
    assert_eq!(s.cache_files().len(), 1);
    cfg.chat.loss = ChatLoss::All;
    let all = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    assert_ne!(all.1, built.1);
    assert_eq!(
        s.cache_files().len(),
        2,
        "another loss option is another cache"
    );
}

/// A cache of the format before loss masks (version 1) is rebuilt, not misread.
#[test]
fn a_version_1_cache_is_rebuilt() {
    assert_eq!(
        datasets::cache::CACHE_VERSION,
        2,
        "bumped for the loss mask"
    );
    let s = Scratch::new();
    let data = s.write("chat.jsonl", jsonl(&[conversation()]));
    let cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let built = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    let file = s.cache_dir().join(&s.cache_files()[0]);
    let bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"\"version\":2")
        .expect("the header names its version");
    let mut old = bytes.clone();
    old[at + 10] = b'1';
    std::fs::write(&file, &old).unwrap();
    let reopened = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
    assert_eq!(reopened, built);
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "rebuilt as version 2");
}

/// Opens `records` (one a line) as chat data with `template`; the error's message.
fn error_with(records: &str, template: ChatTemplateSource) -> (String, PathBuf) {
    let s = Scratch::new();
    let data = s.write("train.jsonl", records);
    let cfg = chat_config(&s, &data, template);
    let err = Dataset::open(&cfg, &ByteTokenizer).unwrap_err();
    (err.to_string(), data)
}

fn assert_error(records: &str, template: ChatTemplateSource, at: &str, wanted: &[&str]) {
    let (message, data) = error_with(records, template);
    let located = format!("{}{at}", data.display());
    assert!(message.contains(&located), "{located:?} not in: {message}");
    for w in wanted {
        assert!(message.contains(w), "{w:?} not in: {message}");
    }
}

fn good() -> String {
    json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        .to_string()
        + "\n"
}

#[test]
fn bad_records_are_errors_naming_file_and_line() {
    let cases: [(&str, &[&str]); 7] = [
        (
            r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
            &["messages[0]: unknown role \"tool\" (expected system, user, assistant)"],
        ),
        (r#"{"messages": []}"#, &["field `messages` is empty"]),
        (
            r#"{"messages": [{"role": "user", "content": ["a"]}]}"#,
            &["messages[0] (role user): `content` must be a string, found an array"],
        ),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            &["messages[0] (role user) has no `content`"],
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}], "text": "b"}"#,
            &["a record mixing kinds", "`messages`", "`text`"],
        ),
        (
            r#"{"text": "a document"}"#,
            &["a language-model text record in a file whose first record is chat"],
        ),
        (
            r#"{"messages": [{"role": "user", "content": "only a question"}]}"#,
            &[
                "no token to learn",
                "built-in chatml template",
                "data.chat.loss",
            ],
        ),
    ];
    for (bad, wanted) in cases {
        let records = good() + "\n" + bad + "\n"; // a blank line 2: the bad record is line 3
        assert_error(&records, ChatTemplateSource::Chatml, ":3: ", wanted);
    }
}

#[test]
fn template_errors_name_the_template_and_the_record() {
    let s = Scratch::new();
    let records = good() + &good();
    let bad_template = |name: &str, source: &str| {
        ChatTemplateSource::Path(s.write(&format!("{name}.jinja"), source))
    };

    // Fails to parse: minijinja's message, with the template file and its line.
    let broken = bad_template("broken", "{% for m in messages %}\n{{ m.content }\n");
    let (message, _) = error_with(&records, broken.clone());
    let ChatTemplateSource::Path(path) = broken else {
        unreachable!()
    };
    let origin = path.display().to_string();
    assert!(
        message.starts_with(&format!("{origin}: the chat template does not parse: ")),
        "{message}"
    );
    assert!(message.contains(&format!("(in {origin}:2)")), "{message}");

    // An undefined variable is an error (strict), naming the variable and the record.
    let undefined = bad_template("undefined", "{{ messages[0].content }}{{ speaker }}");
    assert_error(
        &records,
        undefined,
        ":1: ",
        &["undefined value", "undefined.jinja:1", "not set: speaker"],
    );

    // raise_exception, as HF templates use it to refuse a conversation.
    let picky = bad_template(
        "picky",
        "{% for m in messages %}{% if loop.first and m.role != 'system' %}\
         {{ raise_exception('Conversations must start with a system message') }}\
         {% endif %}{{ m.content }}{% endfor %}",
    );
    assert_error(
        &records,
        picky,
        ":1: ",
        &[
            "Conversations must start with a system message",
            "picky.jinja",
        ],
    );

    // A rendering that changes what came before: the count of messages first.
    let unstable = bad_template(
        "unstable",
        "{{ messages | length }}:{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    assert_error(
        &records,
        unstable,
        ":1: ",
        &[
            "unstable.jinja is not prefix-stable",
            "messages[1]",
            "data.chat.loss",
        ],
    );
}

#[test]
fn a_missing_template_says_which_setting_to_give() {
    let s = Scratch::new();
    let data = s.write("train.jsonl", good());
    let cfg = chat_config(&s, &data, ChatTemplateSource::Checkpoint);
    let err = Dataset::open(&cfg, &ByteTokenizer).unwrap_err();
    assert!(
        matches!(&err, DataError::Config { field, .. } if field == "chat.template"),
        "{err}"
    );
    assert!(err.to_string().contains("\"chatml\""), "{err}");

    // A checkpoint folder without one.
    let checkpoint = s.path("model");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(checkpoint.join("tokenizer_config.json"), "{}").unwrap();
    let err = Dataset::open_with_checkpoint(&cfg, &ByteTokenizer, Some(&checkpoint)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("data config field `chat.template`"),
        "{message}"
    );
    assert!(
        message.contains(&checkpoint.display().to_string()),
        "{message}"
    );

    // A template file that is not there.
    let cfg = chat_config(&s, &data, ChatTemplateSource::Path(s.path("nope.jinja")));
    let err = Dataset::open(&cfg, &ByteTokenizer).unwrap_err();
    assert!(err.to_string().contains("nope.jinja"), "{err}");
}

#[test]
fn chat_config_parses_from_json_and_rejects_unknown_keys() {
    let cfg: DataConfig = serde_json::from_str(
        r#"{"train": "a.jsonl", "seq_len": 8,
            "chat": {"template": {"path": "t.jinja"}, "loss": "all"}}"#,
    )
    .unwrap();
    assert_eq!(
        cfg.chat.template,
        ChatTemplateSource::Path("t.jinja".into())
    );
    assert_eq!(cfg.chat.loss, ChatLoss::All);
    let cfg: DataConfig = serde_json::from_str(
        r#"{"train": "a.jsonl", "seq_len": 8, "chat": {"template": "chatml"}}"#,
    )
    .unwrap();
    assert_eq!(cfg.chat.template, ChatTemplateSource::Chatml);
    assert_eq!(cfg.chat.loss, ChatLoss::Assistant);
    let err = serde_json::from_str::<DataConfig>(
        r#"{"train": "a.jsonl", "seq_len": 8, "chat": {"templat": "chatml"}}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("templat"), "{err}");
    // A data section without chat options writes none back (resolved configs unchanged).
    let plain = serde_json::to_value(DataConfig::new("a.txt", 8)).unwrap();
    assert!(plain.get("chat").is_none(), "{plain}");
}

/// Runs `f` on a thread of its own; `None` if it has not returned after `limit` (a hang, which
/// would otherwise stall the suite instead of failing it).
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive.recv_timeout(limit).ok()
}

/// Generous against the ~1 s the fuel allows: only a template that runs unbounded misses it.
const HANG: std::time::Duration = std::time::Duration::from_secs(120);

#[test]
fn a_template_that_does_not_end_is_an_error_naming_it() {
    let s = Scratch::new();
    let records = good();
    // 10^10 iterations: hours without a budget.
    let source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}\
                  {% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}";
    let template = ChatTemplateSource::Path(s.write("endless.jinja", source));
    let data = s.write("train.jsonl", &records);
    let cfg = chat_config(&s, &data, template);
    let message = within(HANG, move || {
        Dataset::open(&cfg, &ByteTokenizer).unwrap_err().to_string()
    })
    .expect("the endless template was still rendering after two minutes");
    for wanted in ["endless.jinja", "out of fuel", "a loop that does not end?"] {
        assert!(message.contains(wanted), "{wanted:?} not in: {message}");
    }
}

#[test]
fn a_long_conversation_renders_within_the_template_budget() {
    // 20,000 messages through a real template (zephyr's) in one rendering: the budget is far
    // from what real templates use.
    let template = datasets::ChatTemplate::new(
        ZEPHYR.into(),
        "zephyr".into(),
        (String::new(), "</s>".into()),
        ChatLoss::Assistant,
    )
    .unwrap();
    let messages: Vec<serde_json::Value> = (0..20_000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": format!("message {i}")})
        })
        .collect();
    let text = template.render(&messages, false).unwrap();
    assert!(
        text.ends_with("message 19999</s>\n"),
        "{}",
        &text[text.len() - 40..]
    );
}

#[test]
fn chat_settings_on_data_that_is_not_chat_are_refused() {
    let s = Scratch::new();
    let data = s.write("train.txt", "plain text, not conversations\n");
    let cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let message = Dataset::open(&cfg, &ByteTokenizer).unwrap_err().to_string();
    for wanted in ["`chat`", "language-model text", "remove `data.chat`"] {
        assert!(message.contains(wanted), "{wanted:?} not in: {message}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_template_path_that_is_a_fifo_or_a_device_is_refused_without_reading() {
    let s = Scratch::new();
    let data = s.write("train.jsonl", good());
    let fifo = s.path("template.jinja");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, kind) in [
        (fifo, "FIFO"),
        (PathBuf::from("/dev/zero"), "character device"),
    ] {
        let cfg = chat_config(&s, &data, ChatTemplateSource::Path(path.clone()));
        let message = within(HANG, move || {
            Dataset::open(&cfg, &ByteTokenizer).unwrap_err().to_string()
        })
        .expect("reading the template did not return");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(kind), "{kind:?} not in: {message}");
    }
}

/// A ChatML template as a file (the built-in one's text).
const CHATML_FILE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A conversation of `n` messages: a system message, then users and assistants in turn, of
/// varying lengths.
fn long_conversation(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let role = match i {
                0 => "system",
                i if i % 2 == 1 => "user",
                _ => "assistant",
            };
            json!({"role": role, "content": format!("m{i} {}", "x".repeat(i % 7))})
        })
        .collect()
}

/// Row 0 of a batch of one, as `Batch::set_masked_row` cuts an example of `tokens` with
/// `mask` to `seq_len`: the row's tokens and the targets with the loss.
fn expected_row(tokens: &[u32], mask: &[u8], seq_len: usize) -> (Vec<u32>, Vec<u32>) {
    let prompt = mask.iter().take_while(|&&m| m == 0).count();
    let completion = (tokens.len() - prompt).min(seq_len);
    let keep_prompt = prompt.min(seq_len + 1 - completion);
    let (first, len) = (prompt - keep_prompt, keep_prompt + completion);
    let seq = tokens[first..first + len].to_vec();
    let learned = (first + 1..first + len)
        .filter(|&k| mask[k] == 1)
        .map(|k| tokens[k])
        .collect();
    (seq, learned)
}

#[test]
fn rows_of_a_long_conversation_equal_those_of_its_full_masks() {
    // Training renders the prefixes only as far as a row reaches (`with_window`); each row
    // must be what the masks of every prefix give, at every seq_len (with one byte a token, the
    // last token a row reaches sweeps over every message boundary), with a template whose
    // replies have a header (ChatML) and one whose replies begin at their first byte (GPT-2's
    // old default), a conversation beginning with a system message and one with a reply.
    let s = Scratch::new();
    for (name, source) in [("chatml", CHATML_FILE), ("gpt2", GPT2_DEFAULT)] {
        let template = s.write(&format!("{name}.jinja"), source);
        let full = datasets::ChatTemplate::new(
            source.into(),
            name.into(),
            (String::new(), "<|endoftext|>".into()),
            ChatLoss::Assistant,
        )
        .unwrap();
        for (n, reply_first, seq_lens) in [
            (60, false, (1..=160).collect::<Vec<_>>()),
            (60, true, (1..=160).collect()),
            (400, false, vec![300, 5000]),
        ] {
            let mut messages = long_conversation(n);
            if reply_first {
                messages[0] = json!({"role": "assistant", "content": "first reply"});
            }
            let (tokens, mask) = full.tokenize(&messages, &ByteTokenizer).unwrap();
            let record = json!({"messages": messages});
            let data = s.write(&format!("{name}-{n}-{reply_first}.jsonl"), jsonl(&[record]));
            for seq_len in seq_lens {
                let mut cfg = chat_config(&s, &data, ChatTemplateSource::Path(template.clone()));
                cfg.seq_len = seq_len;
                let row = first_row(&Dataset::open(&cfg, &ByteTokenizer).unwrap());
                let want = expected_row(&tokens, &mask, seq_len);
                assert_eq!(
                    row, want,
                    "{name}, {n} messages, reply first {reply_first}, seq_len {seq_len}"
                );
            }
        }
    }
}

#[test]
fn a_conversation_of_thirty_thousand_messages_is_prepared_in_linear_time() {
    // Rendering every prefix took 36.5 s for 8,000 messages (quadratic: ~500 s for 30,000);
    // the window makes it one rendering and the prefixes a row of 256 tokens reaches.
    let s = Scratch::new();
    let record = json!({"messages": long_conversation(30_000)});
    let data = s.write("long.jsonl", jsonl(&[record]));
    let cfg = chat_config(&s, &data, ChatTemplateSource::Chatml);
    let started = std::time::Instant::now();
    let ds = within(HANG, move || {
        Dataset::open(&cfg, &ByteTokenizer).map(|_| ())
    })
    .expect("preparing the conversation did not end in two minutes");
    ds.unwrap();
    println!("30,000 messages prepared in {:?}", started.elapsed());
}
