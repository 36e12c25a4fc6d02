//! Bad input: each case is a typed error that names the file and the line (or byte offset),
//! never a panic.

use datasets::{
    ByteTokenizer, CsvConfig, DataConfig, DataError, Dataset, Gpt2Tokenizer, Paths, Validation,
};

use crate::common::Scratch;

fn open(cfg: &DataConfig) -> DataError {
    Dataset::open(cfg, &ByteTokenizer).expect_err("bad input must be refused")
}

fn csv_cfg(template: &str, verbalizer: &[(&str, &str)]) -> CsvConfig {
    CsvConfig {
        template: template.into(),
        label_column: "label".into(),
        verbalizer: verbalizer
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        header: true,
        delimiter: None,
        quoting: None,
    }
}

/// The error's message names `file` and, if given, `:line`.
fn assert_names(err: &DataError, file: &str, line: Option<u64>) {
    let msg = err.to_string();
    assert!(msg.contains(file), "message should name {file}: {msg}");
    if let Some(line) = line {
        assert!(
            msg.contains(&format!("{file}:{line}")),
            "message should name line {line}: {msg}"
        );
    }
}

#[test]
fn missing_file_and_missing_validation_file() {
    let s = Scratch::new();
    let err = open(&s.config(s.path("absent.txt"), 4));
    assert!(
        matches!(&err, DataError::NotFound { path } if path.ends_with("absent.txt")),
        "{err:?}"
    );
    assert_names(&err, "absent.txt", None);

    let mut cfg = s.config(s.write("t.txt", "some text here"), 4);
    cfg.validation = Validation::Paths(s.path("val.txt").into());
    assert!(matches!(open(&cfg), DataError::NotFound { path } if path.ends_with("val.txt")));
}

#[test]
fn empty_corpus_folder_and_jsonl() {
    let s = Scratch::new();
    let err = open(&s.config(s.write("empty.txt", ""), 4));
    assert!(matches!(err, DataError::EmptyCorpus { .. }), "{err:?}");
    assert_names(&err, "empty.txt", None);

    let err = open(&s.config(s.write("blank.jsonl", "\n  \n"), 4));
    assert!(matches!(err, DataError::EmptyCorpus { .. }), "{err:?}");

    std::fs::create_dir_all(s.path("nothing")).unwrap();
    s.write("nothing/readme.md", "not data");
    let err = open(&s.config(s.path("nothing"), 4));
    assert!(matches!(err, DataError::EmptyFolder { .. }), "{err:?}");
    assert_names(&err, "nothing", None);
}

#[test]
fn corpus_shorter_than_one_window() {
    let s = Scratch::new();
    let ds = Dataset::open(&s.config(s.write("short.txt", "abc"), 8), &ByteTokenizer).unwrap();
    let err = ds.train_loader(1).expect_err("4 tokens < T + 1 = 9");
    assert!(
        matches!(
            err,
            DataError::TooShort {
                tokens: 4,
                needed: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, "short.txt", None);
    assert!(err.to_string().contains("training split"), "{err}");
}

#[test]
fn invalid_utf8_names_line_and_byte_offset() {
    let s = Scratch::new();
    let err = open(&s.config(s.write("bad.txt", b"hello\nwor\xffld\n"), 4));
    assert!(
        matches!(
            err,
            DataError::InvalidUtf8 {
                line: 2,
                offset: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, "bad.txt", Some(2));
    assert!(err.to_string().contains("byte offset 9"), "{err}");

    // A character cut off by the end of the file.
    let err = open(&s.config(s.write("cut.txt", b"ok \xc3"), 2));
    assert!(
        matches!(
            err,
            DataError::InvalidUtf8 {
                line: 1,
                offset: 3,
                ..
            }
        ),
        "{err:?}"
    );

    let err = open(&s.config(
        s.write("bad.jsonl", b"{\"text\": \"a\"}\n\n{\"text\": \"\xfe\"}\n"),
        2,
    ));
    assert!(
        matches!(
            err,
            DataError::InvalidUtf8 {
                line: 3,
                offset: 25,
                ..
            }
        ),
        "{err:?}"
    );

    let mut cfg = s.config(
        s.write("bad.csv", b"sentence,label\nfine,0\nbro\x80ken,1\n"),
        4,
    );
    cfg.csv = Some(csv_cfg("{sentence}", &[("0", "a"), ("1", "b")]));
    let err = open(&cfg);
    assert!(
        matches!(
            err,
            DataError::InvalidUtf8 {
                line: 3,
                offset: 25,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_jsonl_line_names_the_line() {
    let s = Scratch::new();
    let p = s.write(
        "m.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"\n",
    );
    let err = open(&s.config(p, 2));
    assert!(
        matches!(err, DataError::MalformedJson { line: 3, .. }),
        "{err:?}"
    );
    assert_names(&err, "m.jsonl", Some(3));

    let p = s.write("fields.jsonl", "{\"text\": \"a\"}\n{\"body\": \"b\"}\n");
    let err = open(&s.config(p, 2));
    assert!(
        matches!(err, DataError::BadRecord { line: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("body"),
        "lists the fields found: {err}"
    );

    let p = s.write("type.jsonl", "{\"text\": 5}\n");
    let err = open(&s.config(p, 2));
    assert!(
        matches!(err, DataError::BadRecord { line: 1, .. }),
        "{err:?}"
    );

    let p = s.write(
        "mixed.jsonl",
        "{\"text\": \"a\"}\n{\"prompt\": \"q\", \"completion\": \"a\"}\n",
    );
    let err = open(&s.config(p, 2));
    assert!(
        matches!(err, DataError::BadRecord { line: 2, .. }),
        "{err:?}"
    );

    let p = s.write(
        "nocompletion.jsonl",
        "{\"prompt\": \"q\", \"completion\": \"\"}\n",
    );
    let err = open(&s.config(p, 2));
    assert!(
        matches!(err, DataError::BadRecord { line: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn mixing_language_model_and_classification_files_is_refused() {
    let s = Scratch::new();
    let a = s.write("a.txt", "text");
    let b = s.write("b.csv", "sentence,label\nx,0\n");
    let mut cfg = s.config(Paths(vec![a, b]), 2);
    cfg.csv = Some(csv_cfg("{sentence}", &[("0", "a")]));
    let err = open(&cfg);
    assert!(matches!(err, DataError::MixedKinds { .. }), "{err:?}");
    assert_names(&err, "b.csv", None);
}

#[test]
fn csv_missing_column_unknown_column_and_unknown_label_name_the_row() {
    let s = Scratch::new();
    let mut cfg = s.config(
        s.write("short.csv", "sentence,label\ngood,1\nonly-one-field\n"),
        4,
    );
    cfg.csv = Some(csv_cfg("{sentence}", &[("0", " no"), ("1", " yes")]));
    let err = open(&cfg);
    assert!(
        matches!(&err, DataError::MissingColumn { line: 3, column, found: 1, .. } if column == "label"),
        "{err:?}"
    );
    assert_names(&err, "short.csv", Some(3));

    cfg.train = s.write("cols.csv", "text,label\ngood,1\n").into();
    let err = open(&cfg);
    assert!(
        matches!(&err, DataError::UnknownColumn { column, .. } if column == "sentence"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("text, label"),
        "lists the header: {err}"
    );

    cfg.train = s
        .write("labels.csv", "sentence,label\ngood,1\nbad,2\n")
        .into();
    let err = open(&cfg);
    assert!(
        matches!(&err, DataError::UnknownLabel { line: 3, label, .. } if label == "2"),
        "{err:?}"
    );
    assert_names(&err, "labels.csv", Some(3));

    let mut no_csv = s.config(s.write("x.csv", "sentence,label\ngood,1\n"), 4);
    no_csv.csv = None;
    assert!(matches!(open(&no_csv), DataError::Config { field, .. } if field == "csv"));
}

#[test]
fn a_label_word_that_tokenizes_to_nothing() {
    let s = Scratch::new();
    let mut cfg = s.config(s.write("c.csv", "sentence,label\ngood,1\n"), 4);
    cfg.csv = Some(csv_cfg("{sentence}", &[("0", " no"), ("1", "")]));
    let err = Dataset::open(&cfg, &Gpt2Tokenizer::new().unwrap()).expect_err("empty label word");
    assert!(
        matches!(&err, DataError::EmptyLabelWord { label, .. } if label == "1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("csv.verbalizer"), "{err}");
}

#[test]
fn bad_config_fields_are_named() {
    let s = Scratch::new();
    let p = s.write("t.txt", "text");
    let mut cfg = s.config(p.clone(), 0);
    assert!(matches!(open(&cfg), DataError::Config { field, .. } if field == "seq_len"));
    cfg.seq_len = 2;
    cfg.csv = Some(csv_cfg("no placeholder", &[("0", "a")]));
    assert!(matches!(open(&cfg), DataError::Config { field, .. } if field == "csv.template"));
    let mut cfg = s.config(s.write("data.bin", "x"), 2);
    cfg.validation = Validation::None;
    assert!(matches!(open(&cfg), DataError::UnknownFormat { .. }));
}

#[test]
fn a_fraction_that_leaves_a_split_empty() {
    let s = Scratch::new();
    let mut cfg = s.config(
        s.write("one.jsonl", "{\"prompt\": \"q\", \"completion\": \"a\"}\n"),
        4,
    );
    cfg.validation = Validation::Fraction(0.5);
    let err = open(&cfg);
    assert!(
        matches!(
            err,
            DataError::SplitEmpty {
                count: 1,
                what: "examples",
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, "one.jsonl", None);
    assert!(!err.to_string().contains("window"), "{err}");
}

/// A quote opened and never closed would make the csv reader swallow every following row into
/// one field: refused, naming the line where the quote opened.
#[test]
fn csv_unterminated_quote_names_the_line_it_opened() {
    let s = Scratch::new();
    let mut cfg = s.config(
        s.write(
            "open.csv",
            "sentence,label\ngood,1\n\"never closed,0\nmore,1\n\"rows\",0\n",
        ),
        4,
    );
    cfg.csv = Some(csv_cfg("{sentence}", &[("0", " no"), ("1", " yes")]));
    // Read as it is, rows 3-5 would be one example with the sentence `never closed,0\nmore,1\nrows"`.
    let err = open(&cfg);
    assert!(matches!(err, DataError::Csv { line: 3, .. }), "{err:?}");
    assert_names(&err, "open.csv", Some(3));
    assert!(err.to_string().contains("quote"), "{err}");
    // Never closed at all, up to the end of the file.
    cfg.train = s
        .write(
            "eof.csv",
            "sentence,label\ngood,1\nok,0\n\"open to the end,1\n",
        )
        .into();
    let err = open(&cfg);
    assert!(matches!(err, DataError::Csv { line: 4, .. }), "{err:?}");
    assert!(err.to_string().contains("never closed"), "{err}");

    // Quotes that are closed, doubled inside a field, or inside an unquoted field are fine.
    cfg.train = s
        .write(
            "fine.csv",
            "sentence,label\n\"a, \"\"quoted\"\" one\",1\n5\" screen,0\n\"two\nlines\",1\n",
        )
        .into();
    let ds = Dataset::open(&cfg, &ByteTokenizer).expect("well-formed quotes");
    let _ = ds;
}
