//! Language-model windows: hand-computed batches of a tiny stream (docs/design.md "Data windows"),
//! wrap-around, shuffling by seed, and resuming from a saved position.

use datasets::{Batch, DataError, DataLoader, LoaderState, WindowOrder};

fn rows(v: &[u32], t: usize) -> Vec<Vec<u32>> {
    v.chunks(t).map(<[u32]>::to_vec).collect()
}

#[test]
fn in_order_windows_match_hand_computed_batches_and_wrap() {
    // 21 tokens 0..=20, B=2, T=4: a batch reads B*T+1 = 9 tokens and advances by 8.
    let mut l = DataLoader::from_tokens((0..21).collect(), 2, 4, WindowOrder::Sequential).unwrap();
    let b1 = l.next_batch();
    assert_eq!(b1.shape(), [2, 4]);
    assert_eq!(
        rows(&b1.inputs, 4),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    assert_eq!(
        rows(&b1.targets, 4),
        vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]
    );
    assert_eq!(b1.loss_mask, None);
    assert_eq!(b1.attention_mask, None);
    let b2 = l.next_batch();
    assert_eq!(
        rows(&b2.inputs, 4),
        vec![vec![8, 9, 10, 11], vec![12, 13, 14, 15]]
    );
    assert_eq!(
        rows(&b2.targets, 4),
        vec![vec![9, 10, 11, 12], vec![13, 14, 15, 16]]
    );
    // Position 16: 16 + 9 > 21 tokens, so the position resets to 0 first.
    let b3 = l.next_batch();
    assert_eq!(b3, b1);
    assert_eq!(l.state().position, 8);
}

#[test]
fn a_stream_of_exactly_one_batch_repeats_it() {
    let mut l = DataLoader::from_tokens((0..9).collect(), 2, 4, WindowOrder::Sequential).unwrap();
    let first = l.next_batch();
    assert_eq!(first.targets, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(l.next_batch(), first);
}

#[test]
fn shorter_than_one_batch_is_an_error_naming_the_need() {
    let err = DataLoader::from_tokens((0..8).collect(), 2, 4, WindowOrder::Sequential).unwrap_err();
    match &err {
        DataError::TooShort {
            tokens: 8,
            needed: 9,
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("B*T + 1"), "{err}");
}

#[test]
fn shuffled_windows_visit_every_window_once_per_epoch() {
    // 21 tokens, T=4: windows start at 0, 4, 8, 12, 16 and read 5 tokens each.
    let order = WindowOrder::Shuffled { seed: 3 };
    let mut l = DataLoader::from_tokens((0..21).collect(), 1, 4, order).unwrap();
    let starts: Vec<u32> = (0..10)
        .map(|_| {
            let b = l.next_batch();
            let s = b.inputs[0];
            assert_eq!(b.inputs, vec![s, s + 1, s + 2, s + 3]);
            assert_eq!(b.targets, vec![s + 1, s + 2, s + 3, s + 4]);
            s
        })
        .collect();
    for epoch in starts.chunks(5) {
        let mut e = epoch.to_vec();
        e.sort();
        assert_eq!(e, vec![0, 4, 8, 12, 16], "epoch order {epoch:?}");
    }
}

fn take(l: &mut DataLoader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| l.next_batch()).collect()
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let tokens: Vec<u32> = (0..5000).collect();
    let mk = |seed| {
        DataLoader::from_tokens(tokens.clone(), 4, 16, WindowOrder::Shuffled { seed }).unwrap()
    };
    let a = take(&mut mk(7), 20);
    assert_eq!(a, take(&mut mk(7), 20));
    assert_ne!(a, take(&mut mk(8), 20));
}

#[test]
fn resuming_from_a_saved_position_continues_exactly() {
    let tokens: Vec<u32> = (0..997).map(|i| (i * 7919) % 1000).collect();
    for order in [WindowOrder::Sequential, WindowOrder::Shuffled { seed: 11 }] {
        let mut whole = DataLoader::from_tokens(tokens.clone(), 3, 8, order).unwrap();
        // Long enough to cross epoch boundaries (41 windows of 8, 124 per sequential pass).
        let all = take(&mut whole, 60);
        let mut first = DataLoader::from_tokens(tokens.clone(), 3, 8, order).unwrap();
        take(&mut first, 25);
        let saved = serde_json::to_string(&first.state()).unwrap();

        let mut resumed = DataLoader::from_tokens(tokens.clone(), 3, 8, order).unwrap();
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        resumed.restore(&state).unwrap();
        assert_eq!(resumed.state().batches, 25);
        assert_eq!(take(&mut resumed, 35), all[25..], "{order:?}");
    }
}

#[test]
fn restoring_a_position_of_other_data_or_shape_is_refused() {
    let tokens: Vec<u32> = (0..500).collect();
    let a = DataLoader::from_tokens(tokens.clone(), 2, 8, WindowOrder::Sequential).unwrap();
    let mut other_shape =
        DataLoader::from_tokens(tokens.clone(), 4, 8, WindowOrder::Sequential).unwrap();
    let mut other_seed =
        DataLoader::from_tokens(tokens.clone(), 2, 8, WindowOrder::Shuffled { seed: 1 }).unwrap();
    let mut other_data =
        DataLoader::from_tokens((1..501).collect(), 2, 8, WindowOrder::Sequential).unwrap();
    for l in [&mut other_shape, &mut other_seed, &mut other_data] {
        assert!(matches!(
            l.restore(&a.state()),
            Err(DataError::StateMismatch { .. })
        ));
    }
}

#[test]
fn eval_pass_reads_consecutive_batches_from_the_start() {
    let mut l = DataLoader::from_tokens((0..40).collect(), 2, 4, WindowOrder::Sequential).unwrap();
    l.next_batch();
    let pass: Vec<Batch> = l.eval_pass().collect();
    assert_eq!(pass.len(), 4); // 39 / 8
    let mut fresh =
        DataLoader::from_tokens((0..40).collect(), 2, 4, WindowOrder::Sequential).unwrap();
    assert_eq!(pass, take(&mut fresh, 4));
    assert_eq!(l.state().position, 8, "eval_pass does not move the loader");
}
