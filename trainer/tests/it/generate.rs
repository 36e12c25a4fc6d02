//! `fp8-trainer generate` as a user runs it: a seed gives one continuation and sample i of
//! `--num-samples` is the run seeded seed + i; greedy decoding is the iterated argmax of the
//! model's `logits` and stops after the end-of-text id; top-p limits the tokens drawn; with a
//! text prompt the end-of-text token stops generation without being printed, and the text is
//! streamed as it is generated (split multi-byte characters included, flushed per token, a
//! closed pipe ending it quietly); bad flags exit 2 naming the flag, and a huge
//! `--max-new-tokens` does not abort. Most tests use a model whose next-token distribution is
//! known (see [`constant_byte_model`]), so that what may be drawn is known too.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use trainer::commands::generate::SAMPLE_SEPARATOR;

use crate::common;
use crate::common::fixture;
use crate::common::jobs::fp8_trainer;
use crate::common::process::{assert_exit, child_stderr, wait_at_most, Job};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `generate --checkpoint checkpoint ARGS...`; its standard output (it must succeed).
fn generate(checkpoint: &str, args: &[&str]) -> String {
    let output = fp8_trainer(&[&["generate", "--checkpoint", checkpoint], args].concat());
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    String::from_utf8(output.stdout).expect("generate writes UTF-8")
}

/// The samples of a `--num-samples` output (each sample's text without its newline).
fn samples(stdout: &str) -> Vec<&str> {
    let body = stdout.strip_suffix('\n').expect("ends with a newline");
    body.split(&format!("\n{SAMPLE_SEPARATOR}\n")).collect()
}

/// The bytes tokenizer's end-of-text id.
const EOT: u32 = 256;

/// A copy of the fixture with the bytes tokenizer's 257 tokens (`vocab_size` 257,
/// `eos_token_id` 256, so that `--tokens` and `--prompt --tokenizer bytes` draw alike) whose
/// logits are the same at every position: `logits` for the listed ids, -30 for the others.
/// `ln_f` with weight 0 outputs its bias, e_0, whatever its input; the tied head's column 0
/// holds the logits.
fn constant_byte_model(name: &str, logits: &[(u32, f32)]) -> String {
    let dir = common::edited_fixture(name, |tensors| {
        let n_embd = 64;
        for t in tensors.iter_mut() {
            match t.name.as_str() {
                "transformer.ln_f.weight" => t.values.iter_mut().for_each(|v| *v = 0.0),
                "transformer.ln_f.bias" => {
                    t.values.iter_mut().for_each(|v| *v = 0.0);
                    t.values[0] = 1.0;
                }
                "transformer.wte.weight" => {
                    t.values.truncate(257 * n_embd);
                    t.shape = vec![257, n_embd];
                    for id in 0..257 {
                        let logit = logits.iter().find(|(i, _)| *i == id).map_or(-30.0, |l| l.1);
                        t.values[id as usize * n_embd] = logit;
                    }
                }
                _ => {}
            }
        }
    });
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["vocab_size"] = serde_json::json!(257);
    config["eos_token_id"] = serde_json::json!(EOT);
    std::fs::write(&path, config.to_string()).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let output = fp8_trainer(&[
            "generate",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "1,2,3",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--seed",
            seed,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let first = run("7");
    assert_eq!(first, run("7"));
    assert_ne!(first, run("8"));
    assert_eq!(first.trim().split(',').count(), 8, "{first}");
}

/// Sample i of `--num-samples` is the single run with `--seed` + i, for token and text prompts.
#[test]
fn num_samples_are_the_runs_seeded_seed_plus_i() {
    let fixture = fixture();
    let ids = |seed: &str, n: &str| {
        generate(
            &fixture,
            &[
                "--tokens",
                "1,2,3",
                "--max-new-tokens",
                "8",
                "--temperature",
                "1.0",
                "--top-k",
                "50",
                "--seed",
                seed,
                "--num-samples",
                n,
            ],
        )
    };
    let all = ids("7", "3");
    let parts = samples(&all);
    assert_eq!(parts.len(), 3, "{all}");
    for (i, seed) in ["7", "8", "9"].into_iter().enumerate() {
        assert_eq!(format!("{}\n", parts[i]), ids(seed, "1"), "sample {i}");
        assert_eq!(parts[i].split(',').count(), 8, "{all}");
    }
    assert!(parts[0] != parts[1] && parts[1] != parts[2], "{all}");

    // Text: a model drawing a, b or c (never end-of-text), so that the samples differ.
    let model = constant_byte_model("gen-seeds", &[(97, 1.0), (98, 1.0), (99, 1.0)]);
    let text = |seed: &str, n: &str| {
        generate(
            &model,
            &[
                "--prompt",
                "Hi",
                "--tokenizer",
                "bytes",
                "--max-new-tokens",
                "12",
                "--temperature",
                "1.0",
                "--seed",
                seed,
                "--num-samples",
                n,
            ],
        )
    };
    let all = text("41", "2");
    let parts = samples(&all);
    assert_eq!(parts.len(), 2, "{all}");
    assert_eq!(format!("{}\n", parts[0]), text("41", "1"));
    assert_eq!(format!("{}\n", parts[1]), text("42", "1"));
    assert_ne!(parts[0], parts[1]);
    assert!(
        parts
            .iter()
            .all(|p| p.len() == 2 + 12 && p.starts_with("Hi")),
        "{all}"
    );
}

/// The greedy continuation of `prompt` computed with `logits` alone: the argmax (first of equal
/// maxima, as `generate` takes it) of the last row, appended, `max_new` times or until `eos`.
/// `tag` names the scratch folder (the tests run in parallel).
fn iterated_argmax(
    tag: &str,
    checkpoint: &str,
    prompt: &[u32],
    max_new: usize,
    eos: u32,
) -> Vec<u32> {
    let out = common::scratch_dir(&format!("cli-argmax-{tag}")).join("logits.json");
    let mut tokens = prompt.to_vec();
    let mut new = Vec::new();
    while new.len() < max_new {
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let output = fp8_trainer(&[
            "logits",
            "--checkpoint",
            checkpoint,
            "--tokens",
            &list.join(","),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let rows = json["logits"].as_array().unwrap();
        let last: Vec<f64> = rows[rows.len() - 1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32;
        tokens.push(best);
        new.push(best);
        if best == eos {
            break;
        }
    }
    new
}

/// `generate --tokens IDS --temperature 0 --max-new-tokens N` on `checkpoint`: the new ids.
fn greedy(checkpoint: &str, prompt: &str, max_new: usize) -> Vec<u32> {
    let output = fp8_trainer(&[
        "generate",
        "--checkpoint",
        checkpoint,
        "--tokens",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        &max_new.to_string(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    text.trim().split(',').map(|t| t.parse().unwrap()).collect()
}

/// Greedy generation is the iterated argmax of the model's logits, N new tokens exactly (the
/// fixture's eos_token_id 511 never wins here: no stop).
#[test]
fn greedy_generate_is_the_iterated_argmax_of_the_logits() {
    const N: usize = 12;
    let new = greedy(&fixture(), "1,2,3", N);
    assert_eq!(new.len(), N, "{new:?}");
    assert!(!new.contains(&511), "{new:?}");
    assert_eq!(new, iterated_argmax("n", &fixture(), &[1, 2, 3], N, 511));
}

/// With `eos_token_id` set to a token the greedy continuation produces, `generate --tokens`
/// stops right after emitting it.
#[test]
fn greedy_generate_stops_at_the_eos_token() {
    const N: usize = 12;
    let full = iterated_argmax("eos", &fixture(), &[1, 2, 3], N, 511);
    // The second new token, so that the stop cuts a longer continuation short.
    let eos = full[1];
    let stop_at = full.iter().position(|&t| t == eos).unwrap();
    let dir = common::fixture_with_config("cli-eos", |config| {
        config["eos_token_id"] = serde_json::json!(eos)
    });

    let new = greedy(dir.to_str().unwrap(), "1,2,3", N);
    assert_eq!(new, full[..=stop_at], "stops after eos {eos}");
    assert!(new.len() < N);
}

/// p(a, b, c) = (6, 3, 1) / 10: `--top-p 0.5` leaves only a, 0.7 a and b.
#[test]
fn top_p_limits_the_tokens_drawn() {
    let model = constant_byte_model("gen-top-p", &[(97, 6f32.ln()), (98, 3f32.ln()), (99, 0.0)]);
    let drawn = |top_p: &str| {
        let out = generate(
            &model,
            &[
                "--prompt",
                "x",
                "--tokenizer",
                "bytes",
                "--max-new-tokens",
                "60",
                "--temperature",
                "1.0",
                "--top-p",
                top_p,
                "--num-samples",
                "3",
            ],
        );
        let mut seen: Vec<char> = samples(&out)
            .iter()
            .flat_map(|s| s.strip_prefix('x').unwrap().chars())
            .collect();
        seen.sort();
        seen.dedup();
        seen.into_iter().collect::<String>()
    };
    assert_eq!(drawn("1"), "abc");
    assert_eq!(drawn("0.5"), "a");
    assert_eq!(drawn("0.7"), "ab");
}

/// Generation stops at end-of-text without printing it as text (the bytes tokenizer would
/// decode it as `<|endoftext|>`); `--ignore-eos` goes on and prints it. With `--tokens` the
/// stop id is the last id printed.
#[test]
fn end_of_text_stops_and_is_not_printed() {
    let model = constant_byte_model("gen-eot", &[(EOT, 5.0), (97, 1.0)]);
    let greedy = [
        "--tokenizer",
        "bytes",
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
    ];
    let run = |extra: &[&str]| generate(&model, &[&greedy[..], extra].concat());
    assert_eq!(run(&["--prompt", "Hello"]), "Hello\n");
    assert_eq!(
        run(&["--prompt", "Hello", "--ignore-eos"]),
        "Hello<|endoftext|><|endoftext|>\n"
    );
    assert_eq!(run(&["--tokens", "1,2"]), "256\n");
    assert_eq!(run(&["--tokens", "1,2", "--ignore-eos"]), "256,256\n");
}

#[test]
fn generate_continues_a_text_prompt() {
    let checkpoint = fixture();
    let base = [
        "generate",
        "--checkpoint",
        &checkpoint,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
    ];
    // The fixture's 512-token vocabulary holds the 257 byte tokens.
    let output =
        fp8_trainer(&[&base[..], &["--tokenizer", "bytes", "--temperature", "0"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("Hello"));

    // No tokenizer in the folder and not GPT-2's vocabulary: bad input, named.
    let output = fp8_trainer(&base);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--tokenizer") && stderr(&output).contains("gpt2-tiny"),
        "{}",
        stderr(&output)
    );
}

/// The longest prefix of `bytes` that is UTF-8, as text: what `generate` prints for a
/// byte-level continuation (one token per byte).
fn valid_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap(),
    }
}

/// The streamed text of each sample equals decoding its ids (from `--tokens`, same seeds) at
/// once, split two-byte characters included: `é` is 0xC3 0xA9, two tokens, and the first one
/// alone does not decode.
#[test]
fn streamed_text_equals_decoding_the_ids_with_split_characters() {
    let model = constant_byte_model(
        "gen-utf8",
        &[
            (97, 2f32.ln()),
            (0xC3, 3f32.ln()),
            (0xA9, 3f32.ln()),
            (EOT, 2f32.ln()),
        ],
    );
    let common = [
        "--max-new-tokens",
        "6",
        "--temperature",
        "1",
        "--num-samples",
        "64",
    ];
    let text = generate(
        &model,
        &[&common[..], &["--prompt", "Hi", "--tokenizer", "bytes"]].concat(),
    );
    let ids = generate(&model, &[&common[..], &["--tokens", "72,105"]].concat());
    let (text, ids) = (samples(&text), samples(&ids));
    assert_eq!(text.len(), 64);
    assert_eq!(ids.len(), 64);
    let mut split = 0;
    for (i, (text, ids)) in text.iter().zip(&ids).enumerate() {
        let mut bytes: Vec<u8> = Vec::new();
        for id in ids.split(',').map(|t| t.parse::<u32>().unwrap()) {
            match id {
                EOT => break,
                id => bytes.push(u8::try_from(id).unwrap()),
            }
        }
        let expected = format!("Hi{}", valid_prefix(&bytes));
        assert_eq!(*text, expected, "sample {i}: ids {ids}");
        split += expected.matches('é').count();
    }
    // Measured: 6 in these 64 samples; a pending byte that was dropped would lose them.
    assert!(
        split >= 3,
        "only {split} split characters: the test checks too little"
    );
}

/// With `--prompt` the text reaches stdout while the model is still generating, flushed after
/// every token: stdout is a pipe here, whose buffer (1 KiB in Rust's `Stdout`) would otherwise
/// deliver it in 1 KiB bursts (the fixture makes about 400 tokens a second; the reader would
/// have to sleep for seconds to see a burst that large).
#[test]
fn text_is_written_while_it_is_generated() {
    let model = constant_byte_model("gen-stream", &[(97, 1.0)]);
    let mut child = Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint", &model, "--prompt", "Hello"])
        .args(["--tokenizer", "bytes", "--temperature", "0"])
        .args(["--max-new-tokens", "1000000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (send, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if send.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    const WANT: &str = "Helloaaaaaaaa";
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while seen.len() < WANT.len() && Instant::now() < deadline {
        if let Ok(chunk) = received.recv_timeout(Duration::from_millis(100)) {
            seen.extend(chunk);
        }
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.starts_with(WANT),
        "after 120 s stdout holds only {seen:?}"
    );
    assert!(running, "the process ended before {WANT:?} arrived");
    assert!(
        seen.len() < 512,
        "{WANT:?} arrived in a burst of {} bytes: not flushed per token",
        seen.len()
    );
}

/// A reader that stops reading (`generate ... | head -c 10`) ends generation at once, with
/// exit code 0 and no error.
#[test]
fn closing_the_pipe_ends_generate_quietly() {
    let model = constant_byte_model("gen-pipe", &[(97, 1.0)]);
    let mut child = Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint", &model, "--prompt", "Hello"])
        .args(["--tokenizer", "bytes", "--temperature", "0"])
        .args(["--max-new-tokens", "1000000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then closed
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("generate still runs 120 s after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(&first, b"Helloaaaaa");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn bad_top_p_or_num_samples_exit_2_naming_the_flag() {
    for (flag, value) in [
        ("--top-p", "0"),
        ("--top-p", "1.5"),
        ("--top-p", "-0.1"),
        ("--top-p", "NaN"),
        ("--num-samples", "0"),
    ] {
        let output = fp8_trainer(&[
            "generate",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "1,2",
            &format!("{flag}={value}"),
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flag} {value}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(flag),
            "{flag} {value}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn generate_with_top_k_0_or_a_bad_temperature_exits_2() {
    for (flag, value) in [
        ("--top-k", "0"),
        ("--temperature", "NaN"),
        ("--temperature", "-1"),
    ] {
        let out = fp8_trainer(&[
            "generate",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "1,2",
            "--max-new-tokens",
            "3",
            &format!("{flag}={value}"), // `--temperature=-1`: not read as a flag
        ]);
        assert_exit(&format!("{flag} {value}"), &out, 2, &[flag]);
    }
}

#[test]
fn generate_with_a_huge_max_new_tokens_does_not_abort() {
    let mut child = Job(Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint", &fixture(), "--tokens", "1,2"])
        .args(["--max-new-tokens", "1000000000000", "--temperature", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    // Generating that many tokens takes forever; what matters is that it starts.
    match wait_at_most(&mut child, Duration::from_secs(3)) {
        None => {}
        Some((status, _)) => {
            let err = child_stderr(&mut child);
            assert!(
                status.code().is_some(),
                "killed by a signal: {status:?}: {err}"
            );
            assert!(!err.contains("memory allocation"), "{err}");
        }
    }
}
