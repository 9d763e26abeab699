//! Exact deduplication: keep-first, by a 128-bit hash (xxh3-128) of normalised text.
//!
//! Normalisation = Unicode NFKC, optional full case folding, whitespace runs collapsed to
//! one space and trimmed. ASCII text skips NFKC (it is a no-op there). The state (hash ->
//! first global row index) lives in [`Dedup`] so batches can stream through.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::xxh3_128;

/// ASCII bytes that are Unicode White_Space: \t \n \v \f \r and space.
#[inline]
fn ascii_ws(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// Normalise `s` into `out` (cleared first).
pub fn normalize_into(s: &str, casefold: bool, out: &mut String) {
    out.clear();
    if s.is_ascii() {
        // NFKC is the identity on ASCII and case folding is to-lowercase: work on bytes.
        let mut buf = std::mem::take(out).into_bytes();
        buf.reserve(s.len());
        let mut pending = false;
        for &b in s.as_bytes() {
            if ascii_ws(b) {
                pending = !buf.is_empty();
            } else {
                if pending {
                    buf.push(b' ');
                    pending = false;
                }
                buf.push(if casefold { b.to_ascii_lowercase() } else { b });
            }
        }
        // Only ASCII bytes were pushed.
        *out = String::from_utf8(buf).unwrap_or_default();
        return;
    }
    let mut pending_space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    };
    if casefold {
        let folded = caseless::default_case_fold_str(&s.nfkc().collect::<String>());
        for c in folded.chars() {
            push(c, out);
        }
    } else {
        for c in s.nfkc() {
            push(c, out);
        }
    }
}

/// The normalised form as a new string (tests and small uses).
pub fn normalize(s: &str, casefold: bool) -> String {
    let mut out = String::new();
    normalize_into(s, casefold, &mut out);
    out
}

/// Hash of one row: per field a presence byte, then length (u64 LE) and normalised bytes.
pub fn row_hash(
    fields: &[Option<&str>],
    casefold: bool,
    norm: &mut String,
    buf: &mut Vec<u8>,
) -> u128 {
    buf.clear();
    for f in fields {
        match f {
            None => buf.push(0),
            Some(s) => {
                normalize_into(s, casefold, norm);
                buf.push(1);
                buf.extend_from_slice(&(norm.len() as u64).to_le_bytes());
                buf.extend_from_slice(norm.as_bytes());
            }
        }
    }
    xxh3_128(buf)
}

/// The keys are already uniform hashes: fold them instead of hashing again.
#[derive(Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(w);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = (i as u64) ^ ((i >> 64) as u64);
    }
}

/// Streaming keep-first dedup state.
pub struct Dedup {
    pub casefold: bool,
    first: HashMap<u128, u64, BuildHasherDefault<FoldHasher>>,
    /// Rows seen so far over all batches (the next row's global index).
    pub seen: u64,
}

impl Dedup {
    pub fn new(casefold: bool) -> Self {
        Dedup {
            casefold,
            first: HashMap::default(),
            seen: 0,
        }
    }

    /// Number of distinct keys kept so far.
    pub fn unique(&self) -> usize {
        self.first.len()
    }

    /// Hash `n` rows in parallel; `get(row, out)` fills the row's field values.
    pub fn hash_rows<'a, F>(&self, n: usize, nfields: usize, get: F) -> Vec<u128>
    where
        F: Fn(usize, &mut Vec<Option<&'a str>>) + Sync,
    {
        let casefold = self.casefold;
        (0..n)
            .into_par_iter()
            .with_min_len(1024)
            .map_init(
                || (Vec::with_capacity(nfields), String::new(), Vec::new()),
                |(vals, norm, buf), row| {
                    vals.clear();
                    get(row, vals);
                    row_hash(vals, casefold, norm, buf)
                },
            )
            .collect()
    }

    /// Insert a batch of row hashes in order. Returns, per row, the global index of the
    /// row it duplicates (None = kept).
    pub fn insert(&mut self, hashes: &[u128]) -> Vec<Option<u64>> {
        self.first.reserve(hashes.len());
        let mut out = Vec::with_capacity(hashes.len());
        for &h in hashes {
            let idx = self.seen;
            self.seen += 1;
            match self.first.entry(h) {
                std::collections::hash_map::Entry::Occupied(e) => out.push(Some(*e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(idx);
                    out.push(None);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize("  a \t\n b  ", false), "a b");
        assert_eq!(normalize("Ａｂｃ\u{00a0}ﬁ", false), "Abc fi"); // NFKC + NBSP is whitespace
        assert_eq!(normalize("Straße  HELLO", true), "strasse hello");
        assert_eq!(normalize("ABC", false), "ABC");
        assert_eq!(normalize("", true), "");
        assert_eq!(normalize(" \u{3000} ", false), "");
    }

    #[test]
    fn keep_first_across_batches() {
        let mut d = Dedup::new(false);
        let rows1 = [["a", "x"], ["b", "y"], ["a ", " x"]];
        let h1 = d.hash_rows(3, 2, |r, v| v.extend(rows1[r].iter().map(|s| Some(*s))));
        assert_eq!(d.insert(&h1), vec![None, None, Some(0)]);
        let rows2 = [["b", "y"], ["c", "z"]];
        let h2 = d.hash_rows(2, 2, |r, v| v.extend(rows2[r].iter().map(|s| Some(*s))));
        assert_eq!(d.insert(&h2), vec![Some(1), None]);
        assert_eq!((d.seen, d.unique()), (5, 3));
    }

    #[test]
    fn field_boundaries_and_nulls_matter() {
        let mut n = String::new();
        let mut b = Vec::new();
        let h = |f: &[Option<&str>], n: &mut String, b: &mut Vec<u8>| row_hash(f, false, n, b);
        assert_ne!(
            h(&[Some("ab"), Some("c")], &mut n, &mut b),
            h(&[Some("a"), Some("bc")], &mut n, &mut b)
        );
        assert_ne!(
            h(&[None, Some("")], &mut n, &mut b),
            h(&[Some(""), None], &mut n, &mut b)
        );
        assert_eq!(h(&[None], &mut n, &mut b), h(&[None], &mut n, &mut b));
    }
}
