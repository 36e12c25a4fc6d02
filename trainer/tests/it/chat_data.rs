//! Chat data end to end (docs/design.md "Chat data"): training on the shipped conversations
//! (datasets/data/chat_example) puts the loss on the assistant turns only, or on every token,
//! as the step-1 loss shows against the model's own `logits` computed one sequence at a time;
//! a checkpoint folder's `tokenizer_config.json` `chat_template` is the default template, and a
//! checkpoint of a chat job carries its job's template there, so a fine-tune from it renders the
//! same way. (configs/chat.json: shipped_configs.rs.)

use std::path::Path;

use datasets::chat::CHATML;
use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::*;

/// The step-1 loss against the same masked mean computed from `logits`: f32 means of the same
/// log-probabilities summed in another order (example_data.rs MASKED_LOSS_REL_TOL).
const MASKED_LOSS_REL_TOL: f64 = 1e-5;

/// The fixture's context length, so seq_len; the shipped conversations are longer, so the
/// rows are cut (the prompt from the left, then the end) as docs/design.md says.
const SEQ_LEN: usize = 64;

fn shipped_chat() -> std::path::PathBuf {
    common::repo_root().join("datasets/data/chat_example/train.jsonl")
}

/// The first `n` shipped conversations in ChatML as byte tokens, each with whether a token
/// carries the loss: assistant content and its `<|im_end|>\n` (all but the first token with
/// `all`).
fn chatml_conversations(n: usize, all: bool) -> Vec<(Vec<u32>, Vec<bool>)> {
    let text = std::fs::read_to_string(shipped_chat()).unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            let (mut tokens, mut loss) = (Vec::new(), Vec::new());
            for m in record["messages"].as_array().unwrap() {
                let role = m["role"].as_str().unwrap();
                let header = format!("<|im_start|>{role}\n");
                let body = format!("{}<|im_end|>\n", m["content"].as_str().unwrap());
                tokens.extend(header.bytes().map(u32::from));
                loss.extend(header.bytes().map(|_| all));
                tokens.extend(body.bytes().map(u32::from));
                loss.extend(body.bytes().map(|_| all || role == "assistant"));
            }
            loss[0] = false;
            (tokens, loss)
        })
        .collect()
}

/// The row a conversation becomes (datasets `Batch::set_masked_row`): the tokens before the
/// first loss token are the prompt, cut from the left to fit, keeping at least one; the rest
/// is cut to `SEQ_LEN`. Its tokens and the loss flag of each.
fn row(tokens: &[u32], loss: &[bool]) -> (Vec<u32>, Vec<bool>) {
    let p = loss.iter().position(|&l| l).unwrap();
    let completion = (tokens.len() - p).min(SEQ_LEN);
    let keep = p.min(SEQ_LEN + 1 - completion);
    let range = p - keep..p + completion;
    (tokens[range.clone()].to_vec(), loss[range].to_vec())
}

/// log p of each token of `seq` after the first under the fixture, from `logits` of `seq`
/// without its last token (log-softmax in f64 over the whole vocabulary).
fn log_likelihoods(dir: &Path, seq: &[u32]) -> Vec<f64> {
    let log_probs = fixture_log_probs(dir, &seq[..seq.len() - 1]);
    seq[1..]
        .iter()
        .zip(log_probs)
        .map(|(&target, row)| row[target as usize])
        .collect()
}

/// Conversations in the first batch: the first 8 shipped ones (shuffle off), two of them
/// two-round (a later user turn inside the row carries no loss).
const BATCH: usize = 8;

/// A one-step fp32 job on the first BATCH shipped conversations (shuffle off: the first batch),
/// from `checkpoint` with `chat` options.
fn chat_job(dir: &Path, name: &str, checkpoint: &Path, chat: Value) -> Value {
    json!({
        "name": name, "out_dir": dir.join("runs"),
        "model": {"checkpoint": checkpoint},
        "tokenizer": "bytes",
        "data": {"train": shipped_chat(), "seq_len": SEQ_LEN, "cache_dir": dir.join("cache"),
                 "chat": chat},
        "precision": {"mode": "fp32"},
        "batch_size": BATCH, "steps": 1
    })
}

/// The step-1 training loss of `job`.
fn step1_loss(dir: &Path, name: &str, job: &Value) -> String {
    let path = write_config(dir, &format!("{name}.json"), job);
    assert_ok(&train(&path, &[], &[]));
    metrics(&dir.join("runs").join(name))[0][2].clone()
}

/// Step 1 on the shipped conversations: the loss is the mean of -log p over the assistant
/// tokens of the first batch (with `loss: "all"`, over every target), computed from `logits`.
#[test]
fn the_loss_is_the_mean_over_assistant_tokens_or_all_tokens() {
    let dir = scratch("chat-loss");
    let fixture = common::fixture_dir();
    let mut losses = Vec::new();
    for (name, all) in [("assistant", false), ("all", true)] {
        let chat = json!({"template": "chatml", "loss": name});
        let ours: f64 = step1_loss(&dir, name, &chat_job(&dir, name, &fixture, chat))
            .parse()
            .unwrap();
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (tokens, loss) in chatml_conversations(BATCH, all) {
            let (seq, loss) = row(&tokens, &loss);
            let logp = log_likelihoods(&dir, &seq);
            for (lp, &l) in logp.iter().zip(&loss[1..]) {
                if l {
                    sum -= lp;
                    count += 1;
                }
            }
        }
        let expected = sum / count as f64;
        let r = (ours - expected).abs() / expected;
        println!("loss on {name}: step 1 {ours} vs {expected} from logits over {count} targets");
        assert!(r < MASKED_LOSS_REL_TOL, "{name}: {ours} vs {expected}");
        losses.push(ours);
    }
    assert!(
        (losses[0] - losses[1]).abs() > 1e-3,
        "the two masks give the same loss: {losses:?}"
    );
}

/// Without `data.chat.template`, a checkpoint folder's tokenizer_config.json `chat_template`
/// is the template: ChatML there trains exactly as the built-in "chatml"; another template
/// there trains otherwise; a folder without one stops with exit code 2 naming the field.
#[test]
fn a_checkpoint_chat_template_is_the_default() {
    let dir = scratch("chat-checkpoint");
    let with_template = |name: &str, template: Option<&str>| {
        let ckpt = common::fixture_with_config(name, |_| {});
        let mut config = json!({"eos_token": "<|endoftext|>"});
        if let Some(t) = template {
            config["chat_template"] = json!(t);
        }
        std::fs::write(ckpt.join("tokenizer_config.json"), config.to_string()).unwrap();
        ckpt
    };
    let builtin = chat_job(
        &dir,
        "builtin",
        &common::fixture_dir(),
        json!({"template": "chatml"}),
    );
    let builtin = step1_loss(&dir, "builtin", &builtin);

    let chatml = with_template("chat-ckpt-chatml", Some(CHATML));
    let from_checkpoint = step1_loss(&dir, "ckpt", &chat_job(&dir, "ckpt", &chatml, json!({})));
    assert_eq!(
        from_checkpoint, builtin,
        "the checkpoint's ChatML is the built-in one"
    );

    let other = with_template(
        "chat-ckpt-other",
        Some("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"),
    );
    let other_loss = step1_loss(&dir, "other", &chat_job(&dir, "other", &other, json!({})));
    assert_ne!(other_loss, builtin, "the checkpoint's template is used");

    let none = with_template("chat-ckpt-none", None);
    let path = write_config(&dir, "none.json", &chat_job(&dir, "none", &none, json!({})));
    let run = train(&path, &[], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    let message = stderr(&run);
    assert!(message.contains("chat.template"), "{message}");
    assert!(message.contains(&none.display().to_string()), "{message}");
}

/// On chat data the checkpoint's `tokenizer_config.json` carries the job's chat template (where
/// `transformers` looks for it), so a new fine-tune from that checkpoint renders with it by
/// default (`chat.template: "checkpoint"`), with the same loss as naming the template.
#[test]
fn a_chat_checkpoint_carries_its_template() {
    let dir = scratch("chat-template");
    let chat_data = common::repo_root().join("datasets/data/chat_example");
    let mut first = job(&dir, "chat-first", 1);
    first["model"]["n_positions"] = json!(128);
    first["data"] = json!({
        "train": chat_data, "validation": {"fraction": 0.1}, "seq_len": 128,
        "cache_dir": dir.join("cache"), "chat": {"template": "chatml"}
    });
    let path = write_config(&dir, "first.json", &first);
    assert_ok(&train(&path, &[], &[]));
    let ckpt = dir.join("runs/chat-first/checkpoints/step-1");
    let tok_config = read_json(&ckpt.join("tokenizer_config.json"));
    assert_eq!(tok_config["chat_template"], datasets::chat::CHATML);
    assert_eq!(tok_config["fp8_trainer_tokenizer"], "bytes");

    // The same second job with the template taken from the checkpoint and named: same rows.
    let mut losses = Vec::new();
    for (name, template) in [
        ("from-ckpt", json!("checkpoint")),
        ("named", json!("chatml")),
    ] {
        let mut next = job(&dir, name, 1);
        next["model"] = json!({"checkpoint": ckpt});
        next["tokenizer"] = Value::Null;
        next["data"] = first["data"].clone();
        next["data"]["chat"] = json!({"template": template});
        let path = write_config(&dir, &format!("{name}.json"), &next);
        assert_ok(&train(&path, &[], &[]));
        losses.push(exact(&metrics(&dir.join("runs").join(name))));
    }
    assert_eq!(losses[0], losses[1]);
}
