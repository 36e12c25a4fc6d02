//! Throughput of tokenization into a cache and of batch assembly, on a generated corpus of
//! `BENCH_MB` MB (default 256) made by repeating the shipped Shakespeare/Milton texts, so that
//! memory can be seen to stay flat for corpora far larger than the tokenizer's working set.
//!
//! ```text
//! BENCH_MB=256 cargo bench -p datasets --bench throughput
//! ```
//! Prints MB/s, batches/s and tokens/s, and the process's anonymous memory (RssAnon) and peak
//! resident set (VmHWM, which also counts pages of the memory-mapped cache).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use datasets::{
    encode_in_chunks, ByteTokenizer, DataConfig, Dataset, Gpt2Tokenizer, Tokenizer, Validation,
};

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory() -> String {
    format!(
        "RssAnon {:.0} MB, VmHWM {:.0} MB",
        status_kb("RssAnon:") as f64 / 1024.0,
        status_kb("VmHWM:") as f64 / 1024.0
    )
}

fn shipped_text() -> String {
    // Set by cargo when it runs the bench (the compiled-in path can name another clone).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo bench");
    let dir = Path::new(&manifest).join("data/shakespeare_milton");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Writes `mb` MB of text: the shipped corpus repeated, each copy headed by its number so that
/// copies differ.
fn write_corpus(path: &Path, mb: usize, base: &str) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    let mut k = 0;
    while written < (mb as u64) << 20 {
        let head = format!("Copy {k}.\n");
        f.write_all(head.as_bytes()).unwrap();
        f.write_all(base.as_bytes()).unwrap();
        written += (head.len() + base.len()) as u64;
        k += 1;
    }
    f.flush().unwrap();
    written
}

fn write_examples(path: &Path, base: &str, n: usize) {
    let lines: Vec<&str> = base.lines().filter(|l| l.len() > 20).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let (p, c) = (
            lines[(2 * i) % lines.len()],
            lines[(2 * i + 1) % lines.len()],
        );
        let rec = serde_json::json!({"prompt": format!("Continue: {p}\n"), "completion": format!(" {c}")});
        writeln!(f, "{rec}").unwrap();
    }
    f.flush().unwrap();
}

/// CPU seconds used by the whole process so far (all threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall and CPU seconds of `f`. On a shared machine the CPU time is the steadier measure of
/// work per core; the wall time of parallel work shows the speed-up.
fn time<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (t, c) = (Instant::now(), cpu_seconds());
    let out = f();
    (out, t.elapsed().as_secs_f64(), cpu_seconds() - c)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and must not spend a minute generating a corpus.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let threads = rayon::current_num_threads();
    let tmp = tempfile::tempdir().unwrap();
    let base = shipped_text();
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    println!("datasets throughput: {threads} threads, corpus {mb} MB; rates per wall second (per CPU second)");
    println!("start: {}", memory());

    // 1. In-memory encoding of the shipped corpus: ours, tiktoken-rs's, and ours chunked in
    //    parallel (all the same ids).
    let mbs = base.len() as f64 / 1e6;
    let (ours, w1, c1) = time(|| gpt2.encode(&base));
    let (theirs, w2, c2) = time(|| gpt2.encode_with_tiktoken(&base));
    let (chunked, w3, c3) = time(|| encode_in_chunks(&gpt2, &base, 1 << 20));
    assert!(ours == theirs && ours == chunked);
    println!("gpt2 encode {mbs:.1} MB in memory:");
    println!(
        "  regex-crate encoder      {:6.2} MB/s ({:.2})",
        mbs / w1,
        mbs / c1
    );
    println!(
        "  tiktoken-rs (fancy-regex){:6.2} MB/s ({:.2})  ours is x{:.2} per CPU s",
        mbs / w2,
        mbs / c2,
        c2 / c1
    );
    println!(
        "  ours chunked, {threads} threads  {:6.2} MB/s ({:.2})  x{:.2} wall",
        mbs / w3,
        mbs / c3,
        w1 / w3
    );

    // 2. Tokenizing a large file into a cache (streamed, chunked, parallel), cold then warm.
    let corpus = tmp.path().join("corpus.txt");
    let bytes = write_corpus(&corpus, mb, &base) as f64 / 1e6;
    let mut cfg = DataConfig::new(corpus.clone(), 1024);
    cfg.cache_dir = tmp.path().join("cache");
    cfg.validation = Validation::Fraction(0.01);
    for tok in [&ByteTokenizer as &dyn Tokenizer, &gpt2] {
        let (ds, w, c) = time(|| Dataset::open(&cfg, tok).unwrap());
        let after_build = memory();
        let (_, reopen, _) = time(|| Dataset::open(&cfg, tok).unwrap());
        println!(
            "cache build {:>9}: {bytes:.0} MB -> {} tokens in {w:.1} s: {:.1} MB/s ({:.1}); reopen {:.1} ms; {after_build}",
            tok.id(),
            ds.num_train_tokens(),
            bytes / w,
            bytes / c,
            reopen * 1e3
        );
    }

    // 3. Batch assembly from the memory-mapped GPT-2 cache: [8, 1024] windows.
    let ds = Dataset::open(&cfg, &gpt2).unwrap();
    cfg.shuffle = true;
    cfg.seed = 1;
    let shuffled = Dataset::open(&cfg, &gpt2).unwrap();
    for (name, mut loader) in [
        ("in-order", ds.train_loader(8).unwrap()),
        ("shuffled", shuffled.train_loader(8).unwrap()),
    ] {
        let n = 5000;
        let (_, w, c) =
            time(|| (0..n).for_each(|_| drop(std::hint::black_box(loader.next_batch()))));
        println!(
            "windows {name} [8, 1024]: {:.0} batches/s ({:.0}) = {:.0} M tokens/s; {}",
            n as f64 / w,
            n as f64 / c,
            n as f64 * 8192.0 / w / 1e6,
            memory()
        );
    }

    // 4. Padded prompt/completion batches, [16, 128].
    let jsonl = tmp.path().join("pc.jsonl");
    write_examples(&jsonl, &base, 100_000);
    let mut pc = DataConfig::new(jsonl.clone(), 128);
    pc.cache_dir = tmp.path().join("cache");
    pc.shuffle = true;
    let jsonl_mb = std::fs::metadata(&jsonl).unwrap().len() as f64 / 1e6;
    let (pds, w, c) = time(|| Dataset::open(&pc, &gpt2).unwrap());
    println!(
        "cache build jsonl prompt/completion: {} examples, {jsonl_mb:.1} MB in {w:.1} s: {:.1} MB/s ({:.1})",
        pds.num_train_examples(),
        jsonl_mb / w,
        jsonl_mb / c
    );
    let mut loader = pds.train_loader(16).unwrap();
    let n = 5000;
    let (_, w, c) = time(|| (0..n).for_each(|_| drop(std::hint::black_box(loader.next_batch()))));
    println!(
        "examples shuffled [16, 128] padded + masks: {:.0} batches/s ({:.0}) = {:.0} k examples/s",
        n as f64 / w,
        n as f64 / c,
        n as f64 * 16.0 / w / 1e3
    );
    println!("end: {}", memory());
}
