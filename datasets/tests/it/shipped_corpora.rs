//! The corpora shipped in datasets/data open on a fresh machine, with GPT-2, in every path the
//! main jobs use: language-model windows and the author-classification set.

use datasets::{DataConfig, DataKind, Dataset, Gpt2Tokenizer, SplitName, Tokenizer, Validation};

use crate::common;

#[test]
fn shakespeare_milton_corpus_as_language_model_data() {
    let s = common::Scratch::new();
    let corpus = common::data_dir().join("shakespeare_milton");
    let mut cfg = s.config(corpus.clone(), 64);
    cfg.validation = Validation::Fraction(0.05);
    cfg.shuffle = true;
    cfg.seed = 1337;
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    // Small chunks, so the chunked path is what builds the cache here.
    let ds = Dataset::open_with_chunk_bytes(&cfg, &gpt2, None, 16 * 1024).unwrap();
    assert_eq!(ds.kind(), DataKind::LanguageModel);

    // The stream is the files, in name order, each encoded whole and followed by <|endoftext|>.
    let mut expected = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in &names {
        expected.extend(gpt2.encode(&std::fs::read_to_string(p).unwrap()));
        expected.push(50256);
    }
    let val_len = (expected.len() as f64 * 0.05).round() as usize;
    assert_eq!(ds.num_train_tokens(), expected.len() - val_len);
    assert!(expected.len() > 500_000, "{} tokens", expected.len());
    let v = ds.validation_loader(4).unwrap().unwrap().next_batch();
    let cut = expected.len() - val_len;
    assert_eq!(v.inputs[..64], expected[cut..cut + 64]);

    let b = ds.train_loader(8).unwrap().next_batch();
    assert_eq!(b.shape(), [8, 64]);
    let text = gpt2.decode(&b.inputs[..64]).unwrap();
    assert!(!text.is_empty());
}

#[test]
fn author_classification_set() {
    let s = common::Scratch::new();
    let dir = common::data_dir().join("author");
    let mut cfg: DataConfig = serde_json::from_value(serde_json::json!({
        "train": dir.join("train.tsv"),
        "validation": {"paths": dir.join("validation.tsv")},
        "seq_len": 48,
        "shuffle": true,
        "csv": {
            "template": "Line: {sentence}\nAuthor:",
            "verbalizer": {"0": " Shakespeare", "1": " Milton"}
        }
    }))
    .unwrap();
    cfg.cache_dir = s.cache_dir();
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let ds = Dataset::open(&cfg, &gpt2).unwrap();
    assert_eq!(ds.kind(), DataKind::Classification);
    assert_eq!(ds.num_train_examples(), 2000);
    let val = ds.classification(SplitName::Validation).unwrap();
    assert_eq!(val.len(), 500);
    assert_eq!(
        val.candidates(),
        [gpt2.encode(" Shakespeare"), gpt2.encode(" Milton")]
    );
    let golds: Vec<usize> = (0..val.len()).map(|i| val.example(i).label).collect();
    assert_eq!(golds.iter().filter(|&&g| g == 1).count(), 250, "balanced");
    let first = gpt2.decode(&val.example(0).prompt).unwrap();
    assert!(
        first.starts_with("Line: ") && first.ends_with("\nAuthor:"),
        "{first:?}"
    );

    let mut train = ds.train_loader(16).unwrap();
    let b = train.next_batch();
    assert_eq!(b.shape(), [16, 48]);
    assert_eq!(train.truncated_examples(), 0, "lines fit in 48 tokens");
    let sb = val.scoring_batch(0..4, 48);
    assert_eq!(sb.batch.shape(), [8, 48]);
}
