//! What the crate's benchmarks share.

use std::time::{Duration, Instant};

/// Median of `reps` timed runs after one warm-up.
pub fn median_time(reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}
