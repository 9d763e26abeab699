//! Exact deduplication: keep-first, by a 128-bit hash (xxh3-128) of normalised text.
//!
//! Normalisation = Unicode NFKC, optional full case folding, whitespace runs collapsed to
//! one space and trimmed. ASCII text skips NFKC (it is a no-op there). The state (hash ->
//! first global row index) lives in [`Dedup`] so batches can stream through.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
use xxhash_rust::xxh3::Xxh3Default;

/// Starters (combining class 0) with NFKC_Quick_Check = Yes in common scripts: Latin-1
/// letters, basic Cyrillic, kana, CJK unified ideographs, Hangul syllables. They reset
/// the quick-check state just like ASCII, so no table lookup is needed for them.
#[inline]
fn nfkc_starter(c: char) -> bool {
    matches!(c,
        '\u{C0}'..='\u{FF}'
        | '\u{400}'..='\u{45F}'
        | '\u{3041}'..='\u{3096}'
        | '\u{30A1}'..='\u{30FA}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7A3}')
}

/// Is `s` in NFKC? The Unicode quick check, run only on the stretches between ASCII
/// and common starters (which cannot change the answer), so typical text costs
/// little more than `is_ascii`.
fn is_nfkc(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i..].iter().position(|&c| c >= 0x80) {
            None => return true,
            Some(p) => i += p,
        }
        let end = b[i..]
            .iter()
            .position(|&c| c < 0x80)
            .map_or(b.len(), |p| i + p);
        // i and end sit on char boundaries (ASCII bytes or the ends).
        let run = &s[i..end];
        let mut seg = 0;
        for (j, c) in run.char_indices() {
            if nfkc_starter(c) {
                if seg < j && is_nfkc_quick(run[seg..j].chars()) != IsNormalized::Yes {
                    return false;
                }
                seg = j + c.len_utf8();
            }
        }
        if seg < run.len() && is_nfkc_quick(run[seg..].chars()) != IsNormalized::Yes {
            return false;
        }
        i = end;
    }
    true
}

/// True when collapsing whitespace would not change `s`: no control whitespace, no
/// non-ASCII whitespace, no double space, no space at either end.
fn already_collapsed(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() == Some(&b' ') || b.last() == Some(&b' ') {
        return false;
    }
    // Branch-free pass the compiler vectorises: \t \n \v \f \r.
    let ctrl = b.chunks(64).any(|c| {
        c.iter()
            .fold(false, |acc, &x| acc | (x.wrapping_sub(0x09) < 5))
    });
    if ctrl || memchr::memmem::find(b, b"  ").is_some() {
        return false;
    }
    // Non-ASCII White_Space: U+0085 U+00A0 (C2 ..), U+1680 (E1 ..), U+2000..U+205F
    // (E2 ..), U+3000 (E3 80 80). Look only at those lead bytes.
    memchr::memchr3_iter(0xC2, 0xE1, 0xE2, b).all(|i| ws_len_at(b, i) == 0)
        && memchr::memchr_iter(0xE3, b).all(|i| ws_len_at(b, i) == 0)
}

/// The normalised form of `s`: borrowed when `s` is already normal (the common case),
/// else built in `out`.
pub fn normalized<'a>(s: &'a str, casefold: bool, out: &'a mut String) -> &'a str {
    let ascii = s.is_ascii();
    let nfkc = ascii || is_nfkc(s);
    if nfkc && (!casefold || (ascii && !s.bytes().any(|c| c.is_ascii_uppercase()))) {
        if already_collapsed(s) {
            return s;
        }
        collapse_ws(s, out);
        return out;
    }
    normalize_into(s, casefold, out);
    out
}

/// Normalise `s` into `out` (cleared first).
pub fn normalize_into(s: &str, casefold: bool, out: &mut String) {
    // NFKC only when the quick check cannot prove the text is already NFKC (ASCII and
    // most real text pass without building a copy).
    let nfkc: Cow<str> = if s.is_ascii() || is_nfkc(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfkc().collect())
    };
    let folded: Cow<str> = match (casefold, nfkc.is_ascii()) {
        (false, _) => nfkc,
        (true, true) => Cow::Owned(nfkc.to_ascii_lowercase()),
        (true, false) => Cow::Owned(caseless::default_case_fold_str(&nfkc)),
    };
    collapse_ws(&folded, out);
}

/// Bytes that may start whitespace: ASCII \t..\r and space, and the lead bytes of the
/// non-ASCII White_Space characters (U+0085/U+00A0: C2, U+1680: E1, U+2000..: E2,
/// U+3000: E3).
const MAY_WS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0x09;
    while i <= 0x0D {
        t[i] = true;
        i += 1;
    }
    t[0x20] = true;
    t[0xC2] = true;
    t[0xE1] = true;
    t[0xE2] = true;
    t[0xE3] = true;
    t
};

/// Byte length of the White_Space character starting at `b[i]` (0 if it is not one),
/// decided from the UTF-8 bytes without decoding.
#[inline]
fn ws_len_at(b: &[u8], i: usize) -> usize {
    let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
    match b[i] {
        0x09..=0x0D | 0x20 => 1,
        0xC2 if matches!(at(1), 0x85 | 0xA0) => 2,
        0xE1 if at(1) == 0x9A && at(2) == 0x80 => 3,
        0xE2 if at(1) == 0x80 && matches!(at(2), 0x80..=0x8A | 0xA8 | 0xA9 | 0xAF) => 3,
        0xE2 if at(1) == 0x81 && at(2) == 0x9F => 3,
        0xE3 if at(1) == 0x80 && at(2) == 0x80 => 3,
        _ => 0,
    }
}

/// Collapse runs of Unicode White_Space to one space and trim both ends.
fn collapse_ws(s: &str, out: &mut String) {
    out.clear();
    out.reserve(s.len());
    let b = s.as_bytes();
    let (mut i, mut pending) = (0, false);
    while i < b.len() {
        // Length of the whitespace char at i (0 = not whitespace).
        let ws_len = |i: usize| -> usize {
            if MAY_WS[b[i] as usize] {
                ws_len_at(b, i)
            } else {
                0
            }
        };
        let w = ws_len(i);
        if w > 0 {
            pending = !out.is_empty();
            i += w;
            continue;
        }
        // A run of non-whitespace, with single ASCII spaces between words kept inside.
        let mut j = i + 1;
        while j < b.len() {
            let x = b[j];
            if !MAY_WS[x as usize] {
                j += 1;
            } else if x == b' ' && j + 1 < b.len() && ws_len(j + 1) == 0 {
                j += 2;
            } else if ws_len(j) == 0 {
                j += 1;
            } else {
                break;
            }
        }
        // j lands on a char boundary: it stops only at whitespace starts or the end.
        if pending {
            out.push(' ');
            pending = false;
        }
        out.push_str(&s[i..j]);
        i = j;
    }
}

/// The normalised form as a new string (tests and small uses).
pub fn normalize(s: &str, casefold: bool) -> String {
    let mut out = String::new();
    normalize_into(s, casefold, &mut out);
    out
}

/// Hash of one row: per field a presence byte, then length (u64 LE) and normalised
/// bytes, streamed into xxh3-128 (no concatenated copy).
pub fn row_hash(fields: &[Option<&str>], casefold: bool, norm: &mut String) -> u128 {
    let mut h = Xxh3Default::new();
    for f in fields {
        match f {
            None => h.update(&[0]),
            Some(s) => {
                let n = normalized(s, casefold, norm);
                h.update(&[1]);
                h.update(&(n.len() as u64).to_le_bytes());
                h.update(n.as_bytes());
            }
        }
    }
    h.digest128()
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
                || (Vec::with_capacity(nfields), String::new()),
                |(vals, norm), row| {
                    vals.clear();
                    get(row, vals);
                    row_hash(vals, casefold, norm)
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
    fn borrowed_fast_path_agrees() {
        let cases = [
            "plain text here",
            "two  spaces",
            " lead",
            "trail ",
            "tab\there",
            "é café",
            "non\u{a0}breaking",
            "ﬁ ligature",
            "日本語 テキスト",
            "Upper Case",
            "e\u{301}",
            "x\u{3000}y",
            "\u{85}",
            "",
            "ẞ",
        ];
        for c in cases {
            for cf in [false, true] {
                let mut a = String::new();
                let mut b = String::new();
                normalize_into(c, cf, &mut a);
                assert_eq!(normalized(c, cf, &mut b), a, "{c:?} casefold={cf}");
            }
        }
    }

    #[test]
    fn nfkc_check_matches_full_normalisation() {
        let cases = [
            "abc",
            "é",
            "e\u{301}",
            "ﬁ",
            "日本語",
            "カ\u{3099}",
            "\u{3099}",
            "Å\u{301}\u{323}",
            "a\u{323}\u{301}",
            "a\u{301}\u{323}",
            "Ａ",
            "ÿ\u{308}",
            "х\u{306}",
            "한국어",
            "\u{1100}\u{1161}",
            "①",
            "½",
            "x\u{e9}\u{316}\u{301}",
            "\u{e9}\u{301}\u{316}",
        ];
        for c in cases {
            // Same answer as the quick check over the whole string, and never a false yes.
            assert_eq!(
                is_nfkc(c),
                is_nfkc_quick(c.chars()) == IsNormalized::Yes,
                "{c:?}"
            );
            assert!(!is_nfkc(c) || c.nfkc().collect::<String>() == c, "{c:?}");
        }
    }

    #[test]
    fn whitespace_bytes_match_char_property() {
        for cp in 0..0x110000u32 {
            if let Some(c) = char::from_u32(cp) {
                let mut buf = [0u8; 4];
                let b = c.encode_utf8(&mut buf).as_bytes();
                let want = if c.is_whitespace() { b.len() } else { 0 };
                assert_eq!(ws_len_at(b, 0), want, "U+{cp:04X}");
            }
        }
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
        let mut h = |f: &[Option<&str>]| row_hash(f, false, &mut n);
        assert_ne!(h(&[Some("ab"), Some("c")]), h(&[Some("a"), Some("bc")]));
        assert_ne!(h(&[None, Some("")]), h(&[Some(""), None]));
        assert_eq!(h(&[None]), h(&[None]));
        // Equal after normalisation => equal hash, whether borrowed or rebuilt.
        assert_eq!(h(&[Some("a  b\n")]), h(&[Some("a b")]));
        assert_eq!(h(&[Some("x\u{3000}y")]), h(&[Some("x y")]));
    }
}
