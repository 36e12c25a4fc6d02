//! Tokenized caches: reused when current; rebuilt, never reused, when the source changed, the
//! tokenizer differs, or the file is damaged (with a reason that names it); u16 or u32 by
//! vocabulary; written atomically, also by concurrent builders.

use std::time::{Duration, SystemTime};

use datasets::{ByteTokenizer, DataConfig, Dataset, Gpt2Tokenizer, Tokenizer, TokenizerError};

use crate::common::Scratch;

/// The byte tokenizer with ids shifted past 65535, to exercise 32-bit caches.
struct WideBytes;

const SHIFT: u32 = 70_000;

impl Tokenizer for WideBytes {
    fn id(&self) -> String {
        "wide-bytes".into()
    }
    fn vocab_size(&self) -> usize {
        SHIFT as usize + 257
    }
    fn eot_token(&self) -> u32 {
        SHIFT + 256
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(|b| SHIFT + u32::from(b)).collect()
    }
    fn decode(&self, _: &[u32]) -> Result<String, TokenizerError> {
        unimplemented!("not needed")
    }
}

fn first_inputs(cfg: &DataConfig, tok: &dyn Tokenizer) -> Vec<u32> {
    Dataset::open(cfg, tok)
        .unwrap()
        .train_loader(1)
        .unwrap()
        .next_batch()
        .inputs
}

fn only_cache_file(s: &Scratch) -> std::path::PathBuf {
    let files = s.cache_files();
    assert_eq!(
        files.len(),
        1,
        "one cache file and no temporaries: {files:?}"
    );
    s.cache_dir().join(&files[0])
}

fn header(path: &std::path::Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"FP8TOKC\x01");
    let word = |k: usize| u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[word(1)..word(1) + word(2)]).unwrap()
}

#[test]
fn a_current_cache_is_reused_and_has_the_documented_header() {
    let s = Scratch::new();
    let cfg = s.config(s.write("t.txt", "hello cache"), 4);
    let first = first_inputs(&cfg, &ByteTokenizer);
    let path = only_cache_file(&s);
    let built = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(first_inputs(&cfg, &ByteTokenizer), first);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        built,
        "not rewritten"
    );

    let h = header(&path);
    assert_eq!(h["tokenizer_id"], "bytes");
    assert_eq!(h["vocab_size"], 257);
    assert_eq!(h["token_bytes"], 2);
    assert_eq!(h["n_tokens"], 12);
    assert_eq!(h["sources"][0]["bytes"], 11);
    assert!(h["sources"][0]["mtime_ns"].as_u64().unwrap() > 0);
}

#[test]
fn a_changed_source_is_retokenized() {
    let s = Scratch::new();
    let p = s.write("t.txt", "aaaa aaaa");
    let cfg = s.config(p.clone(), 4);
    assert_eq!(first_inputs(&cfg, &ByteTokenizer), vec![97; 4]);
    // Same size, new content and time: the stamp differs, so the cache is rebuilt.
    std::fs::write(&p, "bbbb bbbb").unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(first_inputs(&cfg, &ByteTokenizer), vec![98; 4]);
    only_cache_file(&s);
}

#[test]
fn a_foreign_or_damaged_cache_is_rebuilt_never_reused() {
    let s = Scratch::new();
    let cfg = s.config(s.write("t.txt", "Hello world, hello caches."), 4);
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let expected = first_inputs(&cfg, &gpt2);
    assert_eq!(expected[..2], [15496, 995]);
    let gpt2_cache = only_cache_file(&s);

    // A byte-tokenizer cache of the same file, copied over the GPT-2 cache's name.
    let other = Scratch::new();
    let mut bytes_cfg = cfg.clone();
    bytes_cfg.cache_dir = other.cache_dir();
    first_inputs(&bytes_cfg, &ByteTokenizer);
    std::fs::copy(only_cache_file(&other), &gpt2_cache).unwrap();
    assert_eq!(first_inputs(&cfg, &gpt2), expected);
    assert_eq!(header(&gpt2_cache)["tokenizer_id"], "gpt2-r50k");

    // Damaged: truncated, then garbage.
    let len = std::fs::metadata(&gpt2_cache).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&gpt2_cache)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    assert_eq!(first_inputs(&cfg, &gpt2), expected);
    std::fs::write(&gpt2_cache, b"garbage").unwrap();
    assert_eq!(first_inputs(&cfg, &gpt2), expected);
    only_cache_file(&s);
}

#[test]
fn wide_vocabularies_use_u32_tokens() {
    let s = Scratch::new();
    let cfg = s.config(s.write("t.txt", "wide"), 3);
    let b = Dataset::open(&cfg, &WideBytes)
        .unwrap()
        .train_loader(1)
        .unwrap()
        .next_batch();
    assert_eq!(b.inputs, vec![SHIFT + 119, SHIFT + 105, SHIFT + 100]);
    assert_eq!(b.targets, vec![SHIFT + 105, SHIFT + 100, SHIFT + 101]);
    assert_eq!(header(&only_cache_file(&s))["token_bytes"], 4);
}

#[test]
fn a_failed_build_leaves_no_file_behind() {
    let s = Scratch::new();
    let cfg = s.config(s.write("bad.txt", b"ok\n\xff"), 2);
    assert!(Dataset::open(&cfg, &ByteTokenizer).is_err());
    assert!(s.cache_files().is_empty(), "{:?}", s.cache_files());
}

#[test]
fn an_unusable_cache_says_why_and_names_the_file() {
    use datasets::cache::{CacheHeader, TokenCache};
    use datasets::CacheError;

    let s = Scratch::new();
    let cfg = s.config(s.write("t.txt", "hello cache"), 4);
    first_inputs(&cfg, &ByteTokenizer);
    let path = only_cache_file(&s);
    let key = serde_json::from_value::<CacheHeader>(header(&path))
        .unwrap()
        .key;
    assert!(TokenCache::open(&path, &key).is_ok());

    let mut other = key.clone();
    other.tokenizer_id = "gpt2-r50k".into();
    let err = TokenCache::open(&path, &other).unwrap_err();
    assert!(
        matches!(&err, CacheError::Stale { path: p, what: "tokenizer" } if *p == path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    let garbage = s.write("cache/garbage.tok", b"garbage");
    let err = TokenCache::open(&garbage, &key).unwrap_err();
    assert!(
        matches!(&err, CacheError::BadMagic { path: p } if *p == garbage),
        "{err:?}"
    );

    // Right magic, header said to lie past the end of the file.
    let mut bytes = b"FP8TOKC\x01".to_vec();
    for word in [32u64, 1000, 0] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let cut = s.write("cache/cut.tok", &bytes);
    let err = TokenCache::open(&cut, &key).unwrap_err();
    assert!(
        matches!(&err, CacheError::TruncatedHeader { path: p } if *p == cut),
        "{err:?}"
    );

    let missing = s.path("cache/missing.tok");
    let err = TokenCache::open(&missing, &key).unwrap_err();
    assert!(
        matches!(&err, CacheError::Open { path: p, .. } if *p == missing),
        "{err:?}"
    );
}

#[test]
fn concurrent_builds_of_one_cache_all_succeed_and_leave_one_file() {
    let s = Scratch::new();
    let text = "concurrent builders of one cache\n".repeat(20_000);
    let cfg = s.config(s.write("t.txt", text), 8);
    let firsts: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let builds: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| first_inputs(&cfg, &ByteTokenizer)))
            .collect();
        builds.into_iter().map(|b| b.join().unwrap()).collect()
    });
    let expected: Vec<u32> = b"concurre".iter().map(|&b| u32::from(b)).collect();
    assert!(firsts.iter().all(|f| *f == expected), "{firsts:?}");
    only_cache_file(&s);
}
