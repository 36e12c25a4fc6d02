//! Example data end to end (datasets/README.md "What it takes"): `eval` accuracy on CSV
//! classification data, each label word scored by its summed log-likelihood, and training on
//! JSONL prompt/completion examples with the loss masked to the completion. The expected values
//! come from the model's own `logits`, computed one sequence at a time, independently of the
//! batching and masking code under test. (Gradient accumulation on such examples:
//! accumulation.rs.)

use std::path::Path;

use serde_json::{json, Value};

use crate::common;
use crate::common::jobs::*;

/// Bytes tokenizer: end-of-text (the completion's terminator and the padding).
const EOT: u32 = 256;

/// A step-1 training loss against the same masked mean computed from `logits`. Both are f32
/// means of the same log-probabilities, summed in another order and over a [4, 64] batch
/// instead of one sequence at a time. Measured here: 5.8e-8 (6.4940777 against 6.4940781);
/// summing -log p over every position of the batch (the mask ignored) gives 97.9.
const MASKED_LOSS_REL_TOL: f64 = 1e-5;

/// Classification: every example's two label-word scores must differ by more than this for
/// the expected accuracy to be well defined (batched and single-sequence log-likelihoods differ
/// by f32 noise, about 1e-6 per logit; parity/model.rs), and so must their per-token means
/// (the rule it is told apart from). Measured smallest gap here: 2.1e-2.
const SCORE_GAP_MIN: f64 = 1e-3;

/// log p(token) under the fixture for each token of `continuation` after `prompt`, from
/// `logits` of the one sequence `prompt ++ continuation[..len - 1]` (log-softmax in f64 over the
/// whole 512-token vocabulary, as the model scores).
fn log_likelihoods(dir: &Path, prompt: &[u32], continuation: &[u32]) -> Vec<f64> {
    let tokens: Vec<u32> = prompt
        .iter()
        .chain(&continuation[..continuation.len() - 1])
        .copied()
        .collect();
    let log_probs = fixture_log_probs(dir, &tokens);
    continuation
        .iter()
        .enumerate()
        .map(|(k, &target)| log_probs[prompt.len() - 1 + k][target as usize])
        .collect()
}

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Prompts of the classification tests (lines of the sonnets).
const TEXTS: [&str; 8] = [
    "roses are red",
    "the sun, the sea",
    "winter comes",
    "shall I compare thee",
    "to a summer's day",
    "thou art more lovely",
    "and more temperate",
    "rough winds do shake",
];

/// `eval --config` on a CSV classification file of TEXTS, labels `labels` (sorted, as the
/// verbalizer orders them) with words `words`: the accuracy is the fraction of rows whose true
/// label's word has the highest summed log-likelihood after the prompt ("{text} ->"). The
/// labels of the rows are chosen from the independently computed scores: every row labelled as
/// the summed scores predict, except two, so exactly 6 of 8 are right; the two are picked so that
/// each rule in `wrong_rules` (always the first label, always the second, the mean instead of
/// the sum, the last token alone, the second token alone) scores otherwise, unless it predicts
/// exactly what the sum does on these rows; `must_differ` names rules that must not.
fn assert_accuracy(tag: &str, labels: [&str; 2], words: [&str; 2], must_differ: &[&str]) {
    let dir = scratch(tag);
    let argmax = |s: [f64; 2]| usize::from(s[1] > s[0]);
    let mut rules: Vec<(&str, Vec<usize>)> = ["sum", "first label", "second label", "mean"]
        .into_iter()
        .chain(["last token", "second token"])
        .map(|name| (name, Vec::new()))
        .collect();
    let mut smallest_gap = f64::INFINITY;
    for text in TEXTS {
        let prompt = bytes(&format!("{text} ->"));
        let logp: Vec<Vec<f64>> = words
            .iter()
            .map(|w| log_likelihoods(&dir, &prompt, &bytes(w)))
            .collect();
        let of = |f: &dyn Fn(&[f64]) -> f64| [f(&logp[0]), f(&logp[1])];
        let sums = of(&|l| l.iter().sum());
        let means = of(&|l| l.iter().sum::<f64>() / l.len() as f64);
        smallest_gap = smallest_gap.min((sums[0] - sums[1]).abs());
        smallest_gap = smallest_gap.min((means[0] - means[1]).abs());
        let predictions = [
            argmax(sums),
            0,
            1,
            argmax(means),
            argmax(of(&|l| l[l.len() - 1])),
            argmax(of(&|l| l[1])),
        ];
        for (rule, p) in rules.iter_mut().zip(predictions) {
            rule.1.push(p);
        }
    }
    let summed = rules[0].1.clone();
    println!("{tag}: summed-score predictions {summed:?}; smallest gap {smallest_gap:e}");
    assert!(
        smallest_gap > SCORE_GAP_MIN,
        "{tag}: labels too close to call: {smallest_gap}"
    );
    let wrong: Vec<&(&str, Vec<usize>)> = rules[1..].iter().filter(|r| r.1 != summed).collect();
    for name in must_differ {
        assert!(
            wrong.iter().any(|r| r.0 == *name),
            "{tag}: the rule `{name}` predicts what the sum does here: {rules:?}"
        );
    }
    let correct = |predicted: &[usize], gold: &[usize]| {
        predicted.iter().zip(gold).filter(|(p, g)| p == g).count()
    };
    let n = TEXTS.len();
    let pairs = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j)));
    let gold = pairs
        .map(|(i, j)| {
            let mut gold = summed.clone();
            gold[i] = 1 - gold[i];
            gold[j] = 1 - gold[j];
            gold
        })
        .find(|gold| wrong.iter().all(|rule| correct(&rule.1, gold) != n - 2))
        .expect("two labels to flip that tell the summed score from the other rules");

    // Quoted fields (one holds a comma), as CSV allows.
    let mut csv = String::from("text,label\n");
    for (text, label) in TEXTS.iter().zip(&gold) {
        csv += &format!("\"{text}\",{}\n", labels[*label]);
    }
    let data = dir.join("rows.csv");
    std::fs::write(&data, csv).unwrap();
    let verbalizer: serde_json::Map<String, Value> = labels
        .iter()
        .zip(words)
        .map(|(l, w)| (l.to_string(), json!(w)))
        .collect();
    let job = json!({
        "name": "classify", "out_dir": dir.join("runs"),
        "model": {"checkpoint": common::fixture_dir()},
        "tokenizer": "bytes",
        "data": {"train": data, "seq_len": 64, "cache_dir": dir.join("cache"),
                 "csv": {"template": "{text} ->", "label_column": "label",
                         "verbalizer": verbalizer}},
        "precision": {"mode": "fp32"},
        "steps": 1
    });
    let config = write_config(&dir, "classify.json", &job);
    let result = dir.join("eval.json");
    let fixture = common::fixture_dir();
    let run = fp8_trainer(&[
        "eval",
        "--checkpoint",
        fixture.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--batch-size",
        "3", // three batches, the last partly filled
        "--out",
        result.to_str().unwrap(),
    ]);
    assert_ok(&run);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(r["examples"], json!(8));
    assert_eq!(r["accuracy"].as_f64(), Some(6.0 / 8.0), "{tag}: {r}");
    assert_eq!(
        r["loss"],
        Value::Null,
        "classification data has no LM loss: {r}"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("accuracy 0.7500 over 8 examples"),
        "{stdout}"
    );
}

/// Label words of equal length (three byte tokens each, the leading space shared), whose summed
/// scores pick either label: tells the sum from constant answers and from single tokens.
#[test]
fn eval_accuracy_on_csv_classification() {
    assert_accuracy(
        "classification",
        ["neg", "pos"],
        [" nay", " aye"],
        &["first label", "second label", "last token", "second token"],
    );
}

/// Label words of 5 and 3 tokens: the sum (log-likelihood of the whole word) favours the short
/// one on every row here, the per-token mean does not.
#[test]
fn eval_accuracy_sums_the_label_word_tokens() {
    assert_accuracy(
        "classification-lengths",
        ["dn", "up"],
        [" down", " up"],
        &["mean"],
    );
}

/// Twelve prompt/completion examples: prompts of different lengths, completions of three bytes
/// each (so every micro-batch holds equally many loss tokens: 4 per example, end-of-text
/// included).
pub(crate) fn write_examples(dir: &Path) -> (std::path::PathBuf, Vec<(String, String)>) {
    let examples: Vec<(String, String)> = (0..12)
        .map(|i| {
            let (a, b) = (3 * i + 1, 7 * i % 10);
            (
                format!("Q: {a} plus {b}{}?", " ".repeat(i % 4)),
                format!(" {:02}", a + b),
            )
        })
        .collect();
    let jsonl: String = examples
        .iter()
        .map(|(p, c)| json!({"prompt": p, "completion": c}).to_string() + "\n")
        .collect();
    let path = dir.join("examples.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    (path, examples)
}

/// The step-1 training loss on prompt/completion data is the mean of -log p over the
/// completion tokens (and the end-of-text after each) of the first batch only: the prompts and
/// the padding carry no loss.
#[test]
fn masked_loss_is_the_mean_over_completion_tokens() {
    let dir = scratch("masked-loss");
    let (data, examples) = write_examples(&dir);
    let job = json!({
        "name": "masked", "out_dir": dir.join("runs"),
        "model": {"checkpoint": common::fixture_dir()},
        "tokenizer": "bytes",
        "data": {"train": data, "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp32"},
        "batch_size": 4, "steps": 1
    });
    let path = write_config(&dir, "masked.json", &job);
    assert_ok(&train(&path, &[], &[]));
    let ours: f64 = metrics(&dir.join("runs/masked"))[0][2].parse().unwrap();

    // The first batch: examples 0-3 in file order (shuffle off).
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (prompt, completion) in &examples[..4] {
        let mut target = bytes(completion);
        target.push(EOT);
        let logp = log_likelihoods(&dir, &bytes(prompt), &target);
        sum -= logp.iter().sum::<f64>();
        count += logp.len();
    }
    let expected = sum / count as f64;
    let r = (ours - expected).abs() / expected;
    println!("step 1 loss {ours} vs {expected} from logits (rel {r:e})");
    assert!(r < MASKED_LOSS_REL_TOL, "{ours} vs {expected} (rel {r:e})");
}
