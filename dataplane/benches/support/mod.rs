//! What several benches share.

/// Length of a [`random_walk`]: a power of two, so whole batches of any
/// power-of-two size tile it.
pub const WALK_LEN: usize = 1 << 20;

/// A fixed pseudo-random walk (xorshift64) over `0..count`, [`WALK_LEN`]
/// steps long: the same walk in every run and every bench.
pub fn random_walk(count: usize) -> Vec<usize> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..WALK_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % count as u64) as usize
        })
        .collect()
}

/// Steps a batch of the cold-batch benches serves.
pub const BATCH: usize = 32;

/// Benches `{group}/one-by-one` and `{group}/prefetched`: consecutive
/// batches of [`BATCH`] steps of `walk`, each handed to `serve` with
/// whether to prefetch the whole batch before serving it (what the server
/// does for the frames one read brought).
pub fn cold_batches<T>(
    c: &mut criterion::Criterion,
    group: &str,
    walk: &[T],
    mut serve: impl FnMut(&[T], bool),
) {
    assert_eq!(walk.len() % BATCH, 0, "whole batches");
    let mut group = c.benchmark_group(group);
    group.throughput(criterion::Throughput::Elements(BATCH as u64));
    for prefetch in [false, true] {
        let name = if prefetch { "prefetched" } else { "one-by-one" };
        let mut at = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                at = (at + BATCH) % walk.len();
                serve(&walk[at..at + BATCH], prefetch);
            });
        });
    }
    group.finish();
}
