//! Each input format end to end with the byte tokenizer (ids = bytes, end-of-text 256), so the
//! expected tokens, masks and splits can be written down by hand.

use datasets::{
    ByteTokenizer, CsvConfig, DataConfig, DataFormat, DataKind, Dataset, Paths, SplitName,
    Validation,
};

use crate::common::{bytes_ids, Scratch};

const EOT: u32 = 256;

/// All training tokens of `cfg`, read through one in-order window over the whole stream.
fn stream_of(cfg: &DataConfig) -> Vec<u32> {
    let ds = Dataset::open(cfg, &ByteTokenizer).unwrap();
    assert_eq!(ds.kind(), DataKind::LanguageModel);
    let n = ds.num_train_tokens();
    let mut cfg = cfg.clone();
    cfg.seq_len = n - 1;
    let b = Dataset::open(&cfg, &ByteTokenizer)
        .unwrap()
        .train_loader(1)
        .unwrap()
        .next_batch();
    let mut all = b.inputs.clone();
    all.push(*b.targets.last().unwrap());
    all
}

fn doc(text: &str) -> Vec<u32> {
    let mut v = bytes_ids(text);
    v.push(EOT);
    v
}

#[test]
fn text_one_file_several_files_and_a_folder() {
    let s = Scratch::new();
    let a = s.write("corpus/a.txt", "first doc");
    let b = s.write("corpus/b.txt", "\u{feff}second"); // a BOM is dropped
    s.write("corpus/.hidden.txt", "ignored");
    s.write("corpus/notes.md", "ignored");
    assert_eq!(stream_of(&s.config(a.clone(), 4)), doc("first doc"));
    let both = [doc("first doc"), doc("second")].concat();
    assert_eq!(stream_of(&s.config(Paths(vec![a, b]), 4)), both);
    assert_eq!(
        stream_of(&s.config(s.path("corpus"), 4)),
        both,
        "folder: *.txt sorted by name"
    );
}

#[test]
fn jsonl_text_documents() {
    let s = Scratch::new();
    let p = s.write(
        "d.jsonl",
        "{\"text\": \"ab\", \"id\": 1}\n\n{\"text\": \"\"}\n{\"text\": \"c\\nd\"}\n",
    );
    assert_eq!(
        stream_of(&s.config(p, 2)),
        [doc("ab"), doc("c\nd")].concat()
    );
}

#[test]
fn text_and_jsonl_text_mix_in_one_stream() {
    let s = Scratch::new();
    let a = s.write("a.txt", "xy");
    let b = s.write("b.jsonl", "{\"text\": \"z\"}\n");
    assert_eq!(
        stream_of(&s.config(Paths(vec![a, b]), 2)),
        [doc("xy"), doc("z")].concat()
    );
}

#[test]
fn jsonl_prompt_completion_has_a_loss_mask_on_the_completion_only() {
    let s = Scratch::new();
    let p = s.write("pc.jsonl", "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n");
    let ds = Dataset::open(&s.config(p, 6), &ByteTokenizer).unwrap();
    assert_eq!(ds.kind(), DataKind::PromptCompletion);
    let b = ds.train_loader(1).unwrap().next_batch();
    // Sequence: a b | c d <eot>, right-padded with <eot> to T = 6.
    assert_eq!(b.inputs, vec![97, 98, 99, 100, EOT, EOT]);
    assert_eq!(b.targets, vec![98, 99, 100, EOT, EOT, EOT]);
    assert_eq!(b.loss_mask, Some(vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]));
    assert_eq!(
        b.attention_mask,
        Some(vec![true, true, true, true, false, false])
    );
    assert_eq!(b.num_loss_tokens(), 3);
}

#[test]
fn long_prompts_are_cut_from_the_left() {
    let s = Scratch::new();
    let p = s.write(
        "pc.jsonl",
        "{\"prompt\": \"abcdef\", \"completion\": \"xy\"}\n",
    );
    let ds = Dataset::open(&s.config(p, 4), &ByteTokenizer).unwrap();
    let mut l = ds.train_loader(1).unwrap();
    let b = l.next_batch();
    // T + 1 = 5 tokens fit: "ef" + "xy" + <eot>.
    assert_eq!(b.inputs, bytes_ids("efxy"));
    assert_eq!(b.targets, [bytes_ids("fxy"), vec![EOT]].concat());
    assert_eq!(b.loss_mask, Some(vec![0.0, 1.0, 1.0, 1.0]));
    assert_eq!(l.truncated_examples(), 1);
}

#[test]
fn prompt_completion_batches_are_deterministic_and_resumable() {
    let s = Scratch::new();
    let lines: String = (0..37)
        .map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n"))
        .collect();
    let p = s.write("pc.jsonl", lines);
    let mut cfg = s.config(p, 8);
    cfg.shuffle = true;
    cfg.seed = 5;
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let take = |l: &mut datasets::DataLoader, n| (0..n).map(|_| l.next_batch()).collect::<Vec<_>>();
    let all = take(&mut ds.train_loader(4).unwrap(), 25); // 100 examples: crosses two epochs
    assert_eq!(all, take(&mut ds.train_loader(4).unwrap(), 25));
    let mut first = ds.train_loader(4).unwrap();
    take(&mut first, 10);
    let mut resumed = ds.train_loader(4).unwrap();
    resumed.restore(&first.state()).unwrap();
    assert_eq!(take(&mut resumed, 15), all[10..]);
    // Every example once per epoch: 37 distinct first tokens pairs "q<i>".
    let firsts: std::collections::BTreeSet<Vec<u32>> = all
        .iter()
        .flat_map(|b| {
            b.inputs
                .chunks(8)
                .map(|r| r[..3].to_vec())
                .collect::<Vec<_>>()
        })
        .take(37)
        .collect();
    assert_eq!(firsts.len(), 37);
}

fn author_csv() -> CsvConfig {
    CsvConfig {
        template: "{sentence}=".into(),
        label_column: "label".into(),
        verbalizer: [
            ("0".to_string(), "n".to_string()),
            ("1".to_string(), "y".to_string()),
        ]
        .into(),
        header: true,
        delimiter: None,
        quoting: None,
    }
}

#[test]
fn csv_classification_rows_become_prompt_and_label_word() {
    let s = Scratch::new();
    let p = s.write("c.csv", "sentence,label\n\"hi, there\",1\nno,0\n");
    let mut cfg = s.config(p, 12);
    cfg.csv = Some(author_csv());
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    assert_eq!(ds.kind(), DataKind::Classification);
    let b = ds.train_loader(2).unwrap().next_batch();
    let row0 = &b.inputs[..12];
    assert_eq!(&row0[..10], &bytes_ids("hi, there=")[..]); // quotes honoured in CSV
    assert_eq!(b.targets[9], u32::from(b'y'));
    let mask0 = &b.loss_mask.as_ref().unwrap()[..12];
    assert_eq!(mask0.iter().filter(|&&m| m > 0.0).count(), 1);
    assert_eq!(mask0[9], 1.0);

    let set = ds.classification(SplitName::Train).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.labels(), ["0", "1"]);
    assert_eq!(
        set.candidates(),
        [vec![u32::from(b'n')], vec![u32::from(b'y')]]
    );
    assert_eq!(set.example(1).prompt, bytes_ids("no="));
    assert_eq!(set.example(1).label, 0);
}

#[test]
fn tsv_sentence_pairs_without_header_and_literal_quotes() {
    let s = Scratch::new();
    let p = s.write("pairs.tsv", "\"a\tb\tyes\nc\td\tno\n");
    let mut cfg = s.config(p, 16);
    cfg.csv = Some(CsvConfig {
        template: "{0}|{1}?".into(),
        label_column: "2".into(),
        verbalizer: [
            ("no".to_string(), " N".to_string()),
            ("yes".to_string(), " Y".to_string()),
        ]
        .into(),
        header: false,
        delimiter: None,
        quoting: None,
    });
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let set = ds.classification(SplitName::Train).unwrap();
    assert_eq!(
        set.example(0).prompt,
        bytes_ids("\"a|b?"),
        "TSV takes quotes literally"
    );
    assert_eq!(set.example(0).label, 1);
    assert_eq!(set.example(1).label, 0);
}

#[test]
fn scoring_batches_pair_every_example_with_every_label_word() {
    let s = Scratch::new();
    let p = s.write("c.tsv", "sentence\tlabel\nab\t0\ncd\t1\nef\t1\n");
    let mut cfg = s.config(p, 4);
    cfg.csv = Some(author_csv());
    let set = Dataset::open(&cfg, &ByteTokenizer)
        .unwrap()
        .classification(SplitName::Train)
        .unwrap();
    let sb = set.scoring_batch(0..2, 4);
    assert_eq!(sb.batch.shape(), [4, 4]);
    assert_eq!(sb.rows, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    assert_eq!(sb.gold, vec![0, 1]);
    // Row 1 is "ab=" + "y": inputs are its first 3 tokens, targets its last 3, then padding.
    assert_eq!(sb.batch.inputs[4..8], [97, 98, 61, EOT]);
    assert_eq!(sb.batch.targets[4..8], [98, 61, u32::from(b'y'), EOT]);
    assert_eq!(
        sb.batch.loss_mask.as_ref().unwrap()[4..8],
        [0.0, 0.0, 1.0, 0.0]
    );
    // Scores: example 0 prefers label 0, example 1 label 0 (wrong).
    assert_eq!(sb.predictions(&[-1.0, -2.0, -0.5, -3.0]), vec![0, 0]);
    assert_eq!(sb.num_correct(&[-1.0, -2.0, -0.5, -3.0]), 1);
    assert_eq!(sb.predictions(&[f32::NAN, -2.0, -1.0, -1.0]), vec![1, 0]);
    let all: Vec<_> = set.scoring_batches(2, 4).collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].rows, vec![(2, 0), (2, 1)]);
}

#[test]
fn fraction_split_is_deterministic_and_disjoint() {
    let s = Scratch::new();
    let p = s.write("t.txt", "0123456789".repeat(10));
    let mut cfg = s.config(p, 4);
    cfg.validation = Validation::Fraction(0.2);
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    // 101 tokens: the last round(20.2) = 20 are validation, the first 81 training.
    assert_eq!(ds.num_train_tokens(), 81);
    let v = ds.validation_loader(1).unwrap().unwrap().next_batch();
    assert_eq!(v.inputs, bytes_ids("1234"));

    let lines: String = (0..50)
        .map(|i| format!("{{\"prompt\": \"{i:02}\", \"completion\": \"x\"}}\n"))
        .collect();
    let p = s.write("pc.jsonl", lines);
    let mut cfg = s.config(p, 8);
    cfg.validation = Validation::Fraction(0.1);
    cfg.seed = 9;
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    assert_eq!(ds.num_train_examples(), 45);
    let prompts = |l: datasets::DataLoader| -> Vec<Vec<u32>> {
        l.eval_pass()
            .flat_map(|b| {
                b.inputs
                    .chunks(8)
                    .map(|r| r[..2].to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let val = prompts(ds.validation_loader(8).unwrap().unwrap());
    let train = prompts(ds.train_loader(5).unwrap());
    let val: Vec<_> = val.into_iter().filter(|r| r[0] != EOT).collect(); // drop padding rows
    assert_eq!(val.len(), 5);
    assert!(val.iter().all(|r| !train.contains(r)));
    let again = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let val2: Vec<_> = prompts(again.validation_loader(8).unwrap().unwrap())
        .into_iter()
        .filter(|r| r[0] != EOT)
        .collect();
    assert_eq!(val, val2);
}

#[test]
fn separate_validation_files() {
    let s = Scratch::new();
    let t = s.write("train.txt", "abcdefgh");
    let v = s.write("val.txt", "ABCDEFGH");
    let mut cfg = s.config(t, 4);
    cfg.validation = Validation::Paths(v.into());
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let b = ds.validation_loader(1).unwrap().unwrap().next_batch();
    assert_eq!(b.inputs, bytes_ids("ABCD"));
    assert_eq!(
        ds.train_loader(1).unwrap().next_batch().inputs,
        bytes_ids("abcd")
    );
}

#[test]
fn explicit_format_overrides_the_extension() {
    let s = Scratch::new();
    let p = s.write("data.log", "{\"text\": \"hi\"}\n");
    let mut cfg = s.config(p, 2);
    cfg.format = DataFormat::Jsonl;
    assert_eq!(stream_of(&cfg), doc("hi"));
}
