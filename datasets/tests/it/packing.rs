//! Packed examples (`data.packing`): an epoch's examples packed best-fit decreasing, each
//! example as its own unpacked row would hold it (inputs, targets, loss mask) with positions
//! restarting at 0, padding only at a window's tail, every example once an epoch; resumable;
//! refused for language-model data.

use datasets::{Batch, ByteTokenizer, DataLoader, Dataset};

use crate::common::{bytes_ids, Scratch};

const EOT: u32 = 256;

fn pc(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(p, c)| format!("{{\"prompt\": \"{p}\", \"completion\": \"{c}\"}}\n"))
        .collect()
}

#[test]
fn windows_are_packed_best_fit_decreasing_positions_restart_and_padding_is_at_the_tail() {
    let s = Scratch::new();
    // Spans (input tokens: prompt + completion + <eot>, less one): 4, 3, 5, 3.
    let p = s.write(
        "pc.jsonl",
        pc(&[("ab", "cd"), ("x", "yz"), ("pqrs", "t"), ("e", "fg")]),
    );
    let mut cfg = s.config(p, 8);
    cfg.packing = true;
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let mut l = ds.train_loader(2).unwrap();
    assert_eq!(l.batches_per_epoch(), 1);
    let b = l.next_batch();
    // Longest first: "pqrst" (5) opens a window, "abcd" (4) does not fit beside it and opens
    // another; "xyz" (3) goes where it fits most tightly, beside "pqrst" (3 left: full), "efg"
    // beside "abcd". (In order, greedily, "abcd" + "xyz" would leave a gap of 1 and "pqrst" +
    // "efg" fill the second: the same two windows here; `best_fit_beats_filling_in_order`
    // shows where they differ.) Windows come in the order of their first example, examples
    // within one in order.
    let row0 = [bytes_ids("abcd"), bytes_ids("efg"), vec![EOT]].concat();
    let row1 = [bytes_ids("xyz"), bytes_ids("pqrst")].concat();
    assert_eq!(b.inputs, [row0, row1].concat());
    let targets0 = [bytes_ids("bcd"), vec![EOT], bytes_ids("fg"), vec![EOT, EOT]].concat();
    let targets1 = [bytes_ids("yz"), vec![EOT], bytes_ids("qrst"), vec![EOT]].concat();
    assert_eq!(b.targets, [targets0, targets1].concat());
    // The target at an example's last input is its own end-of-text (learned, as unpacked),
    // never the next example's first token.
    assert_eq!(
        b.loss_mask.as_deref().unwrap(),
        [
            [0., 1., 1., 1., 1., 1., 1., 0.],
            [1., 1., 1., 0., 0., 0., 1., 1.]
        ]
        .concat()
    );
    assert_eq!(
        b.positions.as_deref().unwrap(),
        [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2, 3, 4]].concat()
    );
    let real: Vec<bool> = b.attention_mask.clone().unwrap();
    assert_eq!(real.iter().filter(|&&r| r).count(), 15);
    assert!(!real[7] && real[..7].iter().all(|&r| r) && real[8..].iter().all(|&r| r));
    // One example a row: 4 rows of 8 for 15 input tokens; packed: 2 windows.
    let pad = l.padding().unwrap();
    assert_eq!((pad.rows, pad.windows, pad.real), (4, 2, 15));
    assert_eq!(pad.unpacked(), 1.0 - 15.0 / 32.0);
    assert_eq!(pad.packed(), 1.0 - 15.0 / 16.0);
    assert_eq!(pad.share(), pad.packed());
    // The position counts windows; the next batch starts the next epoch.
    assert_eq!(l.state().position, 2);
}

/// Spans 5, 5, 3, 3 in windows of 8: in order, greedily, each 5 would take a window and leave 3
/// (one of the 3s then), 3 windows; best fit puts each 3 beside a 5: 2 full windows.
#[test]
fn best_fit_beats_filling_in_order() {
    let s = Scratch::new();
    let p = s.write(
        "pc.jsonl",
        pc(&[("pqrs", "t"), ("klmn", "o"), ("x", "yz"), ("e", "fg")]),
    );
    let mut cfg = s.config(p, 8);
    cfg.packing = true;
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let mut l = ds.train_loader(2).unwrap();
    let pad = l.padding().unwrap();
    assert_eq!((pad.windows, pad.real), (2, 16));
    assert_eq!(pad.packed(), 0.0);
    let b = l.next_batch();
    assert!(b.attention_mask.as_ref().unwrap().iter().all(|&r| r));
    let row0 = [bytes_ids("pqrst"), bytes_ids("xyz")].concat();
    let row1 = [bytes_ids("klmno"), bytes_ids("efg")].concat();
    assert_eq!(b.inputs, [row0, row1].concat());
}

/// `(first token, inputs, targets, loss mask)` of every example span of a batch, split where
/// the positions restart (packed) or by row (unpacked), padding left out.
fn spans(b: &Batch) -> Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> {
    let (mask, real) = (
        b.loss_mask.as_ref().unwrap(),
        b.attention_mask.as_ref().unwrap(),
    );
    let mut out: Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> = Vec::new();
    for i in 0..b.batch * b.seq {
        if !real[i] {
            continue;
        }
        let starts = match &b.positions {
            Some(p) => p[i] == 0,
            None => i % b.seq == 0,
        };
        if starts {
            out.push(Default::default());
        }
        let span = out.last_mut().expect("a span starts at position 0");
        span.0.push(b.inputs[i]);
        span.1.push(b.targets[i]);
        span.2.push(mask[i]);
    }
    out
}

fn varied(s: &Scratch, n: usize) -> std::path::PathBuf {
    let words: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                "p".repeat(1 + i * 7 % 9),
                "c".repeat(1 + i * 5 % 13) + &i.to_string(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = words
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    s.write("pc.jsonl", pc(&pairs))
}

#[test]
fn every_epoch_packs_every_example_once_as_its_unpacked_row_and_resumes_exactly() {
    let s = Scratch::new();
    let p = varied(&s, 41);
    let mut cfg = s.config(p, 16); // some examples are cut to fit 17 tokens
    cfg.shuffle = true;
    cfg.seed = 3;
    let plain = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    cfg.packing = true;
    let packed = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let take = |l: &mut DataLoader, n| (0..n).map(|_| l.next_batch()).collect::<Vec<_>>();
    let mut pl = packed.train_loader(3).unwrap();
    let per_epoch = pl.batches_per_epoch();
    assert!(per_epoch < plain.train_loader(3).unwrap().batches_per_epoch());
    let all = take(&mut pl, 3 * per_epoch); // three epochs
    let unpacked = take(&mut plain.train_loader(1).unwrap(), 41 * 3);
    // Each epoch holds every example once, each as its unpacked row holds it (the windows of a
    // batch after an epoch's last window are padding, all rows of it).
    let sorted = |mut v: Vec<(Vec<u32>, Vec<u32>, Vec<f32>)>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    // One window a batch, so that batches end where epochs do.
    let mut one = packed.train_loader(1).unwrap();
    let windows = one.batches_per_epoch();
    assert_eq!(windows, one.padding().unwrap().windows);
    let by_window = take(&mut one, 3 * windows);
    for epoch in 0..3 {
        let ours: Vec<_> = by_window[epoch * windows..(epoch + 1) * windows]
            .iter()
            .flat_map(spans)
            .collect();
        let theirs: Vec<_> = unpacked[epoch * 41..(epoch + 1) * 41]
            .iter()
            .flat_map(spans)
            .collect();
        assert_eq!(
            sorted(ours),
            sorted(theirs),
            "epoch {epoch}: the same examples"
        );
    }
    assert!(pl.truncated_examples() > 0);
    // Only a window's tail is padding: no real token after the first padding of a row.
    for b in &all {
        for row in b.attention_mask.as_ref().unwrap().chunks(b.seq) {
            let real = row.iter().take_while(|&&r| r).count();
            assert!(row[real..].iter().all(|&r| !r));
        }
    }
    // Resumed from a saved position: the same batches.
    let mut first = packed.train_loader(3).unwrap();
    take(&mut first, 5);
    let mut resumed = packed.train_loader(3).unwrap();
    resumed.restore(&first.state()).unwrap();
    assert_eq!(take(&mut resumed, 7), all[5..12]);
    // A position saved unpacked belongs to other batches: refused.
    let unpacked_state = plain.train_loader(3).unwrap().state();
    assert!(packed
        .train_loader(3)
        .unwrap()
        .restore(&unpacked_state)
        .is_err());
}

#[test]
fn a_packed_evaluation_pass_holds_every_example_once() {
    let s = Scratch::new();
    let p = varied(&s, 23);
    let mut cfg = s.config(p, 16);
    let plain = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    cfg.packing = true;
    let packed = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let (pl, ul) = (
        packed.train_loader(4).unwrap(),
        plain.train_loader(4).unwrap(),
    );
    let mut ours: Vec<_> = pl.eval_pass().flat_map(|b| spans(&b)).collect();
    let mut theirs: Vec<_> = ul.eval_pass().flat_map(|b| spans(&b)).collect();
    ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
    theirs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(ours, theirs);
    assert_eq!(pl.eval_pass().count(), pl.batches_per_epoch());
    let windows = pl.padding().unwrap().windows;
    assert_eq!(windows.div_ceil(4), pl.batches_per_epoch());
    // Unpacked, the same figures, its share one example a row.
    let plain_padding = ul.padding().unwrap();
    assert_eq!(plain_padding.windows, windows);
    assert_eq!(plain_padding.share(), plain_padding.unpacked());
    assert!(plain_padding.unpacked() > plain_padding.packed());
}

#[test]
fn packing_language_model_windows_is_refused_naming_the_field() {
    let s = Scratch::new();
    let p = s.write("train.txt", "plain text, read in full windows\n");
    let mut cfg = s.config(p, 4);
    cfg.packing = true;
    let message = Dataset::open(&cfg, &ByteTokenizer).unwrap_err().to_string();
    for wanted in ["`packing`", "language-model", "remove `data.packing`"] {
        assert!(message.contains(wanted), "{wanted:?} not in: {message}");
    }
}

/// A packed batch without its windows' tail padding: one row of the same examples, targets,
/// loss mask and positions, in order (what the trainer computes on).
#[test]
fn without_padding_keeps_every_real_position_in_order() {
    let s = Scratch::new();
    let p = s.write(
        "pc.jsonl",
        pc(&[("ab", "cd"), ("x", "yz"), ("pqrs", "t"), ("e", "fg")]),
    );
    let mut cfg = s.config(p, 8);
    cfg.packing = true;
    let ds = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    let b = ds.train_loader(2).unwrap().next_batch();
    let c = b.without_padding().expect("one padded position");
    assert_eq!((c.batch, c.seq), (1, 15));
    let real = b.attention_mask.as_ref().unwrap();
    let kept = |v: &[u32]| -> Vec<u32> {
        v.iter()
            .zip(real)
            .filter(|(_, &r)| r)
            .map(|(&x, _)| x)
            .collect()
    };
    assert_eq!(c.inputs, kept(&b.inputs));
    assert_eq!(c.targets, kept(&b.targets));
    assert_eq!(
        c.positions.as_deref().unwrap(),
        kept(b.positions.as_ref().unwrap())
    );
    assert_eq!(c.num_loss_tokens(), b.num_loss_tokens());
    assert_eq!(c.loss_weight(), b.loss_weight());
    assert_eq!(spans(&c.clone_with_all_real()), spans(&b));
    // One example a row: nothing to take out (its padding is inside the causal rows).
    cfg.packing = false;
    let plain = Dataset::open(&cfg, &ByteTokenizer).unwrap();
    assert!(plain
        .train_loader(2)
        .unwrap()
        .next_batch()
        .without_padding()
        .is_none());
}

trait AllReal {
    fn clone_with_all_real(&self) -> Batch;
}

impl AllReal for Batch {
    /// The batch with an attention mask of every position real (what `spans` reads).
    fn clone_with_all_real(&self) -> Batch {
        Batch {
            attention_mask: Some(vec![true; self.batch * self.seq]),
            ..self.clone()
        }
    }
}
