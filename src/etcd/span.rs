//! Pages of a prefix read in ranges with bounded ends, so that a walk costs etcd O(keys), not
//! O(keys²).
//!
//! etcd 3.4 and 3.5 visit every key of a range in their in-memory index even when the range has
//! a limit: 3.5 counts them all for the response's `count`, 3.4 collects them all and then
//! cuts. A page read as `[from, prefix_end)` with a limit of 500 therefore costs as much as the
//! keys after `from` (about 0.95 s for a million keys on 3.5), and a walk in pages costs
//! O(n²). Each range sent here ends instead a [`Width`] past its start: the width that held
//! the page before (learned per prefix and page size), widened while ranges come back short,
//! so a range visits about as many keys as the page returns. Nothing here knows the keys'
//! alphabet: a width is a distance in the key space (bytes read as a big-endian fraction), so
//! a prefix whose keys all share a long head (`etcd-broker.`, zero-padded timestamps) is walked
//! as cheaply as one of random ids.
//!
//! Correctness never depends on a width: the ranges of one page are adjacent (each starts
//! where the one before ended) and the last one may end at the prefix's end, so a page holds
//! exactly the first `limit` keys from `from` on, as one unbounded range would.

use std::future::Future;

use crate::store::prefix_end;

/// A distance in the key space: a range from `start` ends at `start`'s first `depth` bytes
/// (padded with zero bytes), read as a big-endian number, plus `step`. `step` has two bytes of
/// precision (below 2^16), so a width learned from one page fits the next one closely.
/// `depth == 0`: no bound (the prefix's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Width {
    depth: usize,
    step: u32,
}

/// Largest step: beyond it, a width moves up a byte.
const MAX_STEP: u32 = 0xffff;

/// How much wider the next range of a page is after one that came back empty: an empty range
/// costs a round trip and nothing else, a wider one may visit keys the page does not need.
const WIDEN_WHEN_EMPTY: u32 = 4;

impl Width {
    /// The first width of a prefix's walk with nothing learned yet: a 65,536th of the key
    /// space under `prefix` (a walk learns its width from its first full page).
    pub(super) fn initial(prefix: &[u8]) -> Self {
        Self { depth: prefix.len() + 2, step: 1 }
    }

    /// The smallest width that reaches from `start` to `last` (`last >= start`): a range of
    /// it from `start` holds `last`.
    pub(super) fn spanning(start: &[u8], last: &[u8]) -> Self {
        let shared = start.iter().zip(last).take_while(|(a, b)| a == b).count();
        let two = |key: &[u8]| {
            let byte = |i: usize| u32::from(key.get(i).copied().unwrap_or(0));
            byte(shared) << 8 | byte(shared + 1)
        };
        // `last >= start`, so where they differ `last` is the larger.
        Self { depth: shared + 2, step: two(last).saturating_sub(two(start)) + 1 }.normalized()
    }

    /// The narrower of two widths.
    fn min(self, other: Self) -> Self {
        // Compared at the deeper of the two depths (a step there is 256 times smaller).
        let at = |w: Self, depth: usize| u128::from(w.step) << (8 * (depth - w.depth).min(12));
        let depth = self.depth.max(other.depth);
        if at(self, depth) <= at(other, depth) {
            self
        } else {
            other
        }
    }

    /// A quarter wider.
    pub(super) fn with_margin(self) -> Self {
        Self { depth: self.depth, step: self.step.saturating_add(self.step.div_ceil(4)) }.normalized()
    }

    /// About `factor` times as wide.
    pub(super) fn times(self, factor: u32) -> Self {
        Self { depth: self.depth, step: self.step.saturating_mul(factor.max(1)) }.normalized()
    }

    /// The same width with its step at most [`MAX_STEP`] (rounded up a byte at a time).
    fn normalized(self) -> Self {
        let Self { mut depth, mut step } = self;
        while step > MAX_STEP && depth > 0 {
            step = step.div_ceil(256);
            depth -= 1;
        }
        Self { depth, step: step.min(MAX_STEP) }
    }

    /// Where a range from `start` of this width ends: never past `bound` (the prefix's end),
    /// always after `start`.
    pub(super) fn end(self, start: &[u8], bound: &[u8]) -> Vec<u8> {
        if self.depth == 0 {
            return bound.to_vec();
        }
        let mut end = start.to_vec();
        end.resize(self.depth, 0);
        let mut carry = self.step;
        for byte in end.iter_mut().rev() {
            let sum = u32::from(*byte) + carry;
            *byte = (sum & 0xff) as u8;
            carry = sum >> 8;
            if carry == 0 {
                break;
            }
        }
        // A carry out of the first byte: past every key.
        if carry > 0 || end.as_slice() >= bound {
            bound.to_vec()
        } else {
            end
        }
    }
}

/// The first `limit` keys of `prefix` from `from` on (inclusive), in key order, read with
/// `range(start, end, limit)` (the keys in `[start, end)`, at most `limit`, in order) over
/// adjacent bounded ranges starting at width `hint`; and the width to start the next page of
/// the same walk with (`None`: nothing learned, keep the old one).
pub async fn page<V, E, F, Fut>(
    prefix: &str,
    from: &str,
    limit: usize,
    hint: Option<Width>,
    mut range: F,
) -> Result<(Vec<(String, V)>, Option<Width>), E>
where
    F: FnMut(Vec<u8>, Vec<u8>, usize) -> Fut,
    Fut: Future<Output = Result<Vec<(String, V)>, E>>,
{
    let bound = prefix_end(prefix.as_bytes());
    let from = if from < prefix { prefix } else { from };
    let mut width = hint.unwrap_or_else(|| Width::initial(prefix.as_bytes()));
    let mut start = from.as_bytes().to_vec();
    let mut found: Vec<(String, V)> = Vec::new();
    loop {
        let end = width.end(&start, &bound);
        let needed = limit - found.len();
        let got = range(start, end.clone(), needed).await?;
        let short = got.len();
        found.extend(got);
        if found.len() >= limit || end == bound {
            break;
        }
        // Short: the next range starts where this one ended, twice as wide (an empty one four
        // times). Doubling keeps the last range within about twice the key space the page
        // needed; a key space's density varies too much (an alphabet's gaps between '9' and
        // 'a', heads every key shares) for the keys found so far to say how far to reach.
        let factor = if short == 0 { WIDEN_WHEN_EMPTY } else { 2 };
        width = width.times(factor);
        start = end;
    }
    let full = found.len() == limit;
    // At a walk's start the gap from the prefix to its first key says nothing of the keys'
    // density.
    let start = if from == prefix { found.first().map_or(from, |(first, _)| first.as_str()) } else { from };
    let learned = match found.as_slice() {
        [] | [_] if from == prefix => None,
        [] => None,
        // Twice the narrower of the page's two halves: a gap in the key space (between an
        // alphabet's '9' and 'a', where no key can be) widens one half only, and would make
        // the next page's range reach far into keys it does not need.
        [.., (last, _)] if found.len() >= 4 => {
            let middle = found[found.len() / 2].0.as_bytes();
            let first_half = Width::spanning(start.as_bytes(), middle).times(2);
            let second_half = Width::spanning(middle, last.as_bytes()).times(2);
            Some(first_half.min(second_half))
        }
        [.., (last, _)] => Some(Width::spanning(start.as_bytes(), last.as_bytes())),
    }
    // A little wider than the page was, so that the next page's first range is usually enough:
    // one that falls short costs a second range twice as wide.
    .map(Width::with_margin);
    Ok((found, learned.filter(|_| full)))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use super::*;

    #[test]
    fn a_width_ends_after_its_start_and_never_past_the_bound() {
        let bound = prefix_end(b"p/");
        for (width, start, end) in [
            (Width { depth: 3, step: 1 }, &b"p/a"[..], &b"p/b"[..]),
            (Width { depth: 3, step: 1 }, b"p/a\0", b"p/b"),
            (Width { depth: 4, step: 2 }, b"p/a", b"p/a\x02"),
            (Width { depth: 4, step: 1 }, b"p/a\xff", b"p/b\0"),
            (Width { depth: 4, step: 0x0101 }, b"p/a\xff", b"p/c\0"),
            (Width { depth: 3, step: 255 }, b"p/z", &bound),
            (Width { depth: 0, step: 1 }, b"p/z", &bound),
            (Width { depth: 1, step: 1 }, b"p/z", &bound),
        ] {
            assert_eq!(width.end(start, &bound), end, "{width:?} from {start:?}");
        }
    }

    #[test]
    fn a_spanning_width_holds_its_last_key() {
        for (start, last) in [
            (&b"p/0012\0"[..], &b"p/0020"[..]),
            (b"p/a", b"p/a"),
            (b"p/a", b"p/azzz"),
            (b"p/", b"p/\xff\xff"),
            (b"p/x\xfa", b"p/y\x01"),
        ] {
            let width = Width::spanning(start, last);
            let end = width.end(start, &prefix_end(b"p/"));
            assert!(last < end.as_slice(), "{width:?}: {start:?}..{end:?} misses {last:?}");
        }
    }

    #[test]
    fn widening_moves_up_a_byte_past_two_bytes_of_step() {
        assert_eq!(Width { depth: 5, step: 3 }.times(16), Width { depth: 5, step: 48 });
        assert_eq!(Width { depth: 5, step: 0x1000 }.times(16), Width { depth: 4, step: 0x100 });
        assert_eq!(Width { depth: 5, step: 0x1000 }.times(32), Width { depth: 4, step: 0x200 });
        assert_eq!(Width { depth: 1, step: 0x8000 }.times(256), Width { depth: 0, step: 0x8000 });
    }

    /// A prefix's keys in a sorted map, read as etcd reads a range: every key of the range
    /// visited (counted), at most `limit` returned.
    struct Index {
        keys: BTreeMap<Vec<u8>, ()>,
        visited: Cell<usize>,
        ranges: Cell<usize>,
    }

    impl Index {
        fn new(keys: impl IntoIterator<Item = String>) -> Self {
            let keys = keys.into_iter().map(|k| (k.into_bytes(), ())).collect();
            Self { keys, visited: Cell::new(0), ranges: Cell::new(0) }
        }

        fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<(String, ())> {
            let inside = self.keys.range(start.to_vec()..end.to_vec());
            self.visited.set(self.visited.get() + inside.clone().count());
            self.ranges.set(self.ranges.get() + 1);
            inside.take(limit).map(|(k, ())| (String::from_utf8(k.clone()).unwrap(), ())).collect()
        }

        /// Every key of `prefix` in pages of `limit`, as reconcile walks them; checks each
        /// page against the unbounded range.
        fn walk(&self, prefix: &str, limit: usize) -> usize {
            let mut from = prefix.to_owned();
            let mut hint = None;
            let mut seen = 0;
            loop {
                let (keys, learned) =
                    futures_util::FutureExt::now_or_never(page(prefix, &from, limit, hint, |s, e, l| {
                        std::future::ready(Ok::<_, Infallible>(self.range(&s, &e, l)))
                    }))
                    .unwrap()
                    .unwrap();
                let expected: Vec<&[u8]> = self
                    .keys
                    .range(from.as_bytes().to_vec()..prefix_end(prefix.as_bytes()))
                    .take(limit)
                    .map(|(k, ())| k.as_slice())
                    .collect();
                assert_eq!(
                    keys.iter().map(|(k, _)| k.as_bytes()).collect::<Vec<_>>(),
                    expected,
                    "page from {from:?}"
                );
                hint = learned.or(hint);
                seen += keys.len();
                match keys.last() {
                    Some((last, _)) if keys.len() == limit => from = format!("{last}\0"),
                    _ => return seen,
                }
            }
        }
    }

    /// Deterministic pseudo-random hex ids (GUID-like), without a dependency.
    fn ids(n: usize) -> impl Iterator<Item = String> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..n).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{state:016x}")
        })
    }

    #[test]
    fn a_walk_over_random_ids_visits_each_key_a_few_times() {
        // Measured: about 3.8 visits per key (the first page reads ~60% of the keys; each
        // later range reaches past its page by the margin and by the alphabet's gaps).
        let n = 100_000;
        let index = Index::new(ids(n).map(|id| format!("/etcd-broker/instances/{id}")));
        assert_eq!(index.walk("/etcd-broker/instances/", 500), n);
        // An unbounded range per page would visit n²/(2·500) = 10,000,000 keys.
        assert!(index.visited.get() < 5 * n, "visited {} keys for {n}", index.visited.get());
        assert!(index.ranges.get() < 3 * n / 500, "{} ranges", index.ranges.get());
    }

    #[test]
    fn a_walk_over_keys_with_a_long_shared_head_visits_each_key_a_few_times() {
        let n = 100_000;
        // The role-deletion queue's and the expiry index's shapes.
        let queue = Index::new(ids(n).map(|id| format!("/q/etcd-broker.{id}.b")));
        assert_eq!(queue.walk("/q/", 500), n);
        assert!(queue.visited.get() < 5 * n, "visited {}", queue.visited.get());
        let expiries = Index::new((0..n).map(|i| format!("/x/{:020}/i{i}/b", 1_765_000_000 + i * 7)));
        assert_eq!(expiries.walk("/x/", 500), n);
        // Measured 5.6: decimal digits leave 246 of each byte's 256 values unused, every
        // range of the walk meets such gaps.
        assert!(expiries.visited.get() < 7 * n, "visited {}", expiries.visited.get());
    }

    #[test]
    fn a_walk_over_counters_visits_each_key_a_few_times() {
        // The bench's preload: two runs' ids, each a tag and a counter without leading zeros.
        let n = 100_000;
        let keys = (0..n / 2)
            .flat_map(|i| [format!("/i/bench-48c505cc-pre-{i}"), format!("/i/bench-750d0817-pre-{i}")]);
        let index = Index::new(keys);
        assert_eq!(index.walk("/i/", 500), n);
        // Measured 5.2: a counter's digits, like a timestamp's, leave most byte values unused.
        assert!(index.visited.get() < 7 * n, "visited {}", index.visited.get());
    }

    #[test]
    fn single_key_steps_visit_few_keys_each() {
        let n = 5_000;
        let index = Index::new(ids(n).map(|id| format!("/q/etcd-broker.{id}.b")));
        assert_eq!(index.walk("/q/", 1), n);
        // An unbounded range per key would visit n²/2 = 12,500,000 keys.
        assert!(index.visited.get() < 12 * n, "visited {}", index.visited.get());
    }

    #[test]
    fn uneven_and_tiny_prefixes_are_read_whole() {
        let mut keys: Vec<String> = ids(3_000).map(|id| format!("/p/a{id}")).collect();
        keys.extend(ids(10).map(|id| format!("/p/z{id}")));
        keys.push("/p/".to_owned());
        keys.push("/p/\u{7f}".to_owned());
        keys.push("/pq".to_owned()); // outside the prefix
        let index = Index::new(keys);
        assert_eq!(index.walk("/p/", 100), 3_012);
        assert_eq!(Index::new(Vec::new()).walk("/p/", 100), 0);
        assert_eq!(Index::new(vec!["/p/x".to_owned()]).walk("/p/", 100), 1);
    }
}
