//! Listing a prefix for a manifest: every directory at once, and large directories in
//! several key ranges at once.
//!
//! The walk is breadth-first with delimited ListObjectsV2 requests: each page's common
//! prefixes become new listings, so up to `concurrency` directories are listed at once.
//!
//! One flat directory would otherwise be listed page by page: continuation tokens are
//! sequential. So each directory is a set of key *ranges* `(after, upto]` that together cover
//! it exactly. A range lists from `start-after = after` with continuation tokens, drops keys
//! past `upto`, and ends there. While fewer than `concurrency` requests are in flight, a range
//! that still has keys ahead is split at a pivot key:
//! - a range with an end, halfway between the last key it listed and its end;
//! - the open-ended last range of a directory, one page ahead: past the last key it listed by
//!   the key distance its last full page covered, reading keys as numbers in the alphabet that
//!   page's names use (see [`Span`]); pivots are cut back to valid UTF-8, since `start-after`
//!   must be UTF-8.
//!
//! A pivot only decides where work is cut, never what is listed: the ranges always partition
//! the key space, so a bad guess costs one nearly empty request, not a missed key. Ranges of
//! one directory may each report a common prefix that straddles their boundary; each
//! subdirectory is listed once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;

use super::build::{BuildOptions, BuildProgress};
use super::{Entry, Etag, RESERVED_DIR};
use crate::object::{ListPage, ObjectSource, SourceError};

/// What one listing found.
pub(super) struct Listed {
    pub entries: Vec<Entry>,
    pub total_bytes: u64,
    pub requests: u64,
}

/// Where a range's next request starts.
enum Cursor {
    After(Option<Vec<u8>>),
    Token(String),
}

/// One key range `(after, upto]` of a directory.
struct Range {
    prefix: Vec<u8>,
    upto: Option<Vec<u8>>,
    /// The last key (or common prefix) listed, else the range's start.
    last: Option<Vec<u8>>,
    /// The first and last keys of the last full page (the key distance one page covers).
    span: Option<std::sync::Arc<Span>>,
    /// Splits since this range (or the range it was split from) last listed a full page: a
    /// guess made from a guess. Bounded by the concurrency, so splitting stops a few pages
    /// past the last key seen.
    guesses: usize,
    /// A request is in flight or queued, and more pages may follow.
    open: bool,
    /// Made by a guess, and no page came back for it yet.
    guessed: bool,
}

/// Lists everything under the source's prefix (see the module docs).
pub(super) async fn list(
    source: &ObjectSource,
    options: &BuildOptions,
    progress: &BuildProgress,
) -> Result<Listed, SourceError> {
    let root = source.source().prefix.as_bytes().to_vec();
    let reserved = format!("{RESERVED_DIR}/").into_bytes();
    let concurrency = options.concurrency.max(1);
    let mut ranges: Vec<Range> = vec![Range {
        prefix: root.clone(),
        upto: None,
        last: None,
        span: None,
        guesses: 0,
        open: true,
        guessed: false,
    }];
    let mut queue: VecDeque<(usize, Cursor)> = VecDeque::from([(0, Cursor::After(None))]);
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    // Per directory: how far a guess reaches, in pages of its span (see `split_one`).
    let mut scales: HashMap<Vec<u8>, f64> = HashMap::new();
    let mut tasks: JoinSet<Result<(usize, ListPage), SourceError>> = JoinSet::new();
    let mut out = Listed {
        entries: Vec::new(),
        total_bytes: 0,
        requests: 0,
    };
    loop {
        while tasks.len() < concurrency {
            if queue.is_empty() && options.split_ranges {
                if let Some(split) = split_one(&mut ranges, concurrency, &scales) {
                    queue.push_back(split);
                }
            }
            let Some((r, cursor)) = queue.pop_front() else {
                break;
            };
            let (s, prefix) = (source.clone(), ranges[r].prefix.clone());
            tasks.spawn(async move {
                let page = match cursor {
                    Cursor::Token(t) => s.list_page(&prefix, true, Some(t)).await?,
                    Cursor::After(None) => s.list_page(&prefix, true, None).await?,
                    Cursor::After(Some(a)) => s.list_page_after(&prefix, true, &a).await?,
                };
                Ok((r, page))
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (r, mut page) = done.map_err(|e| SourceError::Other {
            what: "listing".into(),
            why: e.to_string(),
        })??;
        out.requests += 1;
        progress.requests.fetch_add(1, Ordering::Relaxed);
        // What lies past the range's end (it may have moved since the request left) belongs
        // to the next range.
        let range = &mut ranges[r];
        let mut passed_end = false;
        if let Some(upto) = &range.upto {
            let before = page.objects.len() + page.prefixes.len();
            page.objects.retain(|o| o.key <= *upto);
            page.prefixes.retain(|p| p <= upto);
            passed_end = page.objects.len() + page.prefixes.len() < before;
        }
        // Objects and common prefixes each come sorted: the page's ends are among theirs.
        let ends = |o: Option<&crate::object::RawObject>, p: Option<&Vec<u8>>| {
            o.map(|o| o.key.clone()).into_iter().chain(p.cloned())
        };
        let first = ends(page.objects.first(), page.prefixes.first()).min();
        let last = ends(page.objects.last(), page.prefixes.last()).max();
        let more = page.next.is_some() && !passed_end;
        // A guessed range listed whole by its first request: it held `kept` names where a
        // page was expected. Later guesses in this directory reach further or less far, so
        // that a guessed range fills about one page.
        if std::mem::take(&mut range.guessed) && passed_end {
            let kept = (page.objects.len() + page.prefixes.len()).max(1) as f64;
            let scale = scales.entry(range.prefix.clone()).or_insert(1.0);
            *scale = (*scale * (PAGE_FILL / kept).sqrt()).clamp(0.25, 64.0);
        }
        if let (true, Some(f), Some(l)) = (more, &first, &last) {
            let keys = page
                .objects
                .iter()
                .map(|o| o.key.as_slice())
                .chain(page.prefixes.iter().map(Vec::as_slice));
            range.span =
                Span::new(f.clone(), l.clone(), range.prefix.len(), keys).map(std::sync::Arc::new);
            range.guesses = 0;
        }
        if last.is_some() {
            range.last = last;
        }
        match page.next.filter(|_| more) {
            Some(token) => queue.push_back((r, Cursor::Token(token))),
            None => range.open = false,
        }
        for p in page.prefixes {
            if p.len() > root.len()
                && p.starts_with(&root)
                && p[root.len()..] != reserved[..]
                && dirs.insert(p.clone())
            {
                ranges.push(Range {
                    prefix: p,
                    upto: None,
                    last: None,
                    span: None,
                    guesses: 0,
                    open: true,
                    guessed: false,
                });
                queue.push_back((ranges.len() - 1, Cursor::After(None)));
            }
        }
        for o in page.objects {
            let Some(rel) = o.key.strip_prefix(root.as_slice()) else {
                continue;
            };
            if rel.is_empty() || rel.starts_with(&reserved) {
                continue;
            }
            out.total_bytes += o.size;
            progress.objects.fetch_add(1, Ordering::Relaxed);
            out.entries.push(Entry {
                key: rel.into(),
                size: o.size,
                mtime_ms: o.mtime_ms,
                etag: Etag::parse(o.etag.as_deref()),
                attrs: Default::default(),
            });
        }
    }
    Ok(out)
}

/// How many names a guessed range should hold: a little under a page, so that one request
/// lists it.
const PAGE_FILL: f64 = 0.9 * crate::object::PAGE_SIZE as f64;

/// Splits the open range most likely to have keys ahead: the new range's first request is
/// returned. Open-ended ranges (the bulk of a flat directory lies there) go first; no range
/// is split on more than `max_guesses` guesses in a row. `scales`: how far a guess reaches
/// per directory, learned from earlier guesses.
fn split_one(
    ranges: &mut Vec<Range>,
    max_guesses: usize,
    scales: &HashMap<Vec<u8>, f64>,
) -> Option<(usize, Cursor)> {
    let candidates = ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.open && r.last.is_some() && r.span.is_some() && r.guesses < max_guesses);
    let (i, pivot) = candidates
        .filter_map(|(i, r)| {
            let last = r.last.as_deref()?;
            let span = r.span.as_ref()?;
            let pivot = match &r.upto {
                Some(upto) => span.midpoint(last, upto)?,
                None => span.ahead(last, scales.get(&r.prefix).copied().unwrap_or(1.0))?,
            };
            Some((r.upto.is_some(), i, pivot))
        })
        .min_by_key(|(bounded, i, _)| (*bounded, *i))
        .map(|(_, i, p)| (i, p))?;
    let parent = &mut ranges[i];
    let new = Range {
        prefix: parent.prefix.clone(),
        upto: parent.upto.replace(pivot.clone()),
        last: Some(pivot.clone()),
        // One page of the parent's density, until the new range lists its own.
        span: parent.span.clone(),
        guesses: parent.guesses + 1,
        open: true,
        guessed: true,
    };
    ranges.push(new);
    Some((ranges.len() - 1, Cursor::After(Some(pivot))))
}

/// Characters before the first difference that a pivot may change.
const HEADROOM: usize = 4;

/// What one full page showed of a directory's names: its first and last keys, and the bytes
/// its names use where they differ. Keys are read as numbers in that alphabet (digit 0: no
/// character), so the distance a page covers can be carried forward: decimal counters count
/// in base 10 (and a bit), hexadecimal hashes in base 16, not in bytes, whose gaps between
/// `9` and `a` would put most guesses where no name is.
struct Span {
    first: Vec<u8>,
    last: Vec<u8>,
    /// Where `first` and `last` start to differ.
    at: usize,
    /// The sorted bytes names use from `at` on.
    alphabet: Vec<u8>,
    /// Digits read from a key: as many as fit in a `u128`.
    len: usize,
}

impl Span {
    /// `floor`: the directory's prefix, which pivots keep.
    fn new<'a>(
        first: Vec<u8>,
        last: Vec<u8>,
        floor: usize,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Option<Self> {
        // A few characters of headroom before the first difference, for the carries of
        // counting on (`0999` + one page = `1998`).
        let differ = common_len(&first, &last);
        let at = differ.saturating_sub(HEADROOM).max(floor).min(differ);
        let mut seen = [false; 256];
        for k in keys {
            for &b in k.get(at..).unwrap_or_default() {
                seen[usize::from(b)] = true;
            }
        }
        let alphabet: Vec<u8> = (0..=255u8).filter(|&b| seen[usize::from(b)]).collect();
        if alphabet.len() < 2 {
            return None;
        }
        let bits = 128 - (alphabet.len() as u128).leading_zeros() as usize;
        Some(Self {
            first,
            last,
            at,
            alphabet,
            len: (127 / bits).max(1),
        })
    }

    fn base(&self) -> u128 {
        self.alphabet.len() as u128 + 1
    }

    /// Characters of `key` from `at`: 0 for none, else 1 + the alphabet's characters not
    /// above it.
    fn value(&self, key: &[u8], at: usize) -> u128 {
        let tail = key.get(at..).unwrap_or_default();
        (0..self.len).fold(0u128, |acc, i| {
            let d = tail
                .get(i)
                .map_or(0, |&b| self.alphabet.partition_point(|&c| c <= b));
            acc * self.base() + d as u128
        })
    }

    /// `prefix` followed by the number `v`, without trailing "no character" digits (one
    /// inside becomes the smallest character), cut back to valid UTF-8.
    fn key(&self, prefix: &[u8], mut v: u128) -> Vec<u8> {
        let mut digits = vec![0usize; self.len];
        for d in digits.iter_mut().rev() {
            *d = (v % self.base()) as usize;
            v /= self.base();
        }
        let used = self.len - digits.iter().rev().take_while(|&&d| d == 0).count();
        let mut out = prefix.to_vec();
        out.extend(
            digits[..used]
                .iter()
                .map(|&d| self.alphabet[d.saturating_sub(1)]),
        );
        if let Err(e) = std::str::from_utf8(&out) {
            out.truncate(e.valid_up_to());
        }
        out
    }

    /// A key strictly between `lo` and `hi`, about halfway, if there is room.
    fn midpoint(&self, lo: &[u8], hi: &[u8]) -> Option<Vec<u8>> {
        let at = common_len(lo, hi);
        let (a, b) = (self.value(lo, at), self.value(hi, at));
        if b <= a || b - a < 2 {
            return None;
        }
        let m = self.key(&lo[..at], a + (b - a) / 2);
        (lo < m.as_slice() && m.as_slice() < hi).then_some(m)
    }

    /// A key past `last` by `scale` times the distance this span's page covered, if it can
    /// be had.
    fn ahead(&self, last: &[u8], scale: f64) -> Option<Vec<u8>> {
        let at = self.at.min(common_len(&self.first, last));
        let step = self
            .value(&self.last, at)
            .checked_sub(self.value(&self.first, at))?;
        let step = (step as f64 * scale) as u128;
        let next = self.value(last, at).checked_add(step.max(1))?;
        if self
            .base()
            .checked_pow(self.len as u32)
            .is_some_and(|max| next >= max)
        {
            return None;
        }
        let k = self.key(&last[..at], next);
        (k.as_slice() > last).then_some(k)
    }
}

fn common_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The span of a page of these names.
    fn span(names: &[String]) -> Span {
        let keys = names.iter().map(|n| n.as_bytes());
        let (first, last) = (names[0].clone(), names[names.len() - 1].clone());
        Span::new(first.into_bytes(), last.into_bytes(), 0, keys).unwrap()
    }

    #[test]
    fn pivots_fall_between_and_step_about_one_page_ahead() {
        let s = span(
            &(1000..2000)
                .map(|i| format!("img_{i:08}.jpg"))
                .collect::<Vec<_>>(),
        );
        let m = s.midpoint(b"img_00001100", b"img_00001300").unwrap();
        assert!(m.as_slice() > &b"img_00001100"[..] && m.as_slice() < &b"img_00001300"[..]);
        assert_eq!(s.midpoint(b"a", b"a"), None, "no key between");
        // Decimal names: a page further is some hundreds of names further (the alphabet also
        // holds ".jpg", so the digits count in base 15, not 10).
        let k = s.ahead(b"img_00001999.jpg", 1.0).unwrap();
        assert!(
            k.as_slice() > &b"img_00002200"[..] && k.as_slice() < &b"img_00003500"[..],
            "{}",
            String::from_utf8_lossy(&k)
        );
        let hex = span(&(0..256).map(|i| format!("{i:04x}")).collect::<Vec<_>>());
        let k = hex.ahead(b"00ff", 1.0).unwrap();
        assert!(k.as_slice() > &b"0100"[..] && k.as_slice() < &b"0300"[..]);
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'0'), Just(b'9'), Just(b'a'), any::<u8>()],
            0..20,
        )
    }

    proptest! {
        #[test]
        fn pivots_are_strictly_inside_and_utf8(first in key(), last in key(), lo in key(), hi in key()) {
            let (first, last) = if first <= last { (first, last) } else { (last, first) };
            let Some(s) = Span::new(first.clone(), last.clone(), 0, [first.as_slice(), last.as_slice(), lo.as_slice(), hi.as_slice()].into_iter()) else {
                return Ok(());
            };
            if let Some(m) = s.midpoint(&lo, &hi) {
                prop_assert!(lo < m && m < hi);
                prop_assert!(std::str::from_utf8(&m).is_ok(), "start-after must be UTF-8");
            }
            if let Some(k) = s.ahead(&lo, 1.0) {
                prop_assert!(k > lo);
                prop_assert!(std::str::from_utf8(&k).is_ok(), "start-after must be UTF-8");
            }
        }
    }
}
