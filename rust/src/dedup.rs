//! Exact deduplication: keep-first, by a 128-bit hash (xxh3-128) of normalised text.
//!
//! Normalisation = Unicode NFKC, optional full case folding, whitespace runs collapsed to
//! one space and trimmed. ASCII text skips NFKC (it is a no-op there). The state (hash ->
//! first global row index) lives in [`Dedup`] so batches can stream through.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use rayon::prelude::*;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
use xxhash_rust::xxh3::Xxh3Default;

/// Bytes per block of the scanners (NFKC lead bytes, whitespace): a block with nothing
/// to look at is skipped after one branch-free (vectorised) test.
const BLOCK: usize = 32;

/// Bitset over the Basic Multilingual Plane: starters (combining class 0) whose
/// NFKC_Quick_Check is Yes. Such a char resets the quick-check state just like ASCII,
/// so text made of them needs no further lookup. Derived once from the normalisation
/// tables themselves (65,536 lookups, well under a millisecond).
fn safe_starters() -> &'static [u64; 1024] {
    static TABLE: OnceLock<Box<[u64; 1024]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u64; 1024]);
        for cp in 0..0x10000u32 {
            if let Some(c) = char::from_u32(cp) {
                if canonical_combining_class(c) == 0
                    && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes
                {
                    t[(cp >> 6) as usize] |= 1 << (cp & 63);
                }
            }
        }
        t
    })
}

/// Per UTF-8 lead byte: true when every char it can start is a safe starter (e.g.
/// C3 = U+00C0..U+00FF, D0/D1 = basic Cyrillic, E4..E9 = CJK ideographs), so the char
/// needs no decoding. Derived from [`safe_starters`].
fn safe_leads() -> &'static [bool; 256] {
    static LEADS: OnceLock<[bool; 256]> = OnceLock::new();
    LEADS.get_or_init(|| {
        let table = safe_starters();
        let mut t = [false; 256];
        for (lead, safe) in t.iter_mut().enumerate() {
            // Code points a lead byte starts (4-byte leads: never safe, beyond the BMP).
            let (lo, hi) = match lead {
                0xC2..=0xDF => (
                    (lead as u32 & 0x1F) << 6,
                    ((lead as u32 & 0x1F) << 6) | 0x3F,
                ),
                0xE0..=0xEF => (
                    (lead as u32 & 0x0F) << 12,
                    ((lead as u32 & 0x0F) << 12) | 0xFFF,
                ),
                _ => continue,
            };
            *safe = (lo.max(0x80)..=hi)
                .all(|cp| char::from_u32(cp).is_some_and(|c| nfkc_starter(table, c)));
        }
        t
    })
}

#[inline]
fn nfkc_starter(table: &[u64; 1024], c: char) -> bool {
    let cp = c as u32;
    cp < 0x10000 && table[(cp >> 6) as usize] & (1 << (cp & 63)) != 0
}

/// Index of the first non-ASCII byte at or after `i`, eight bytes per step.
#[inline]
fn next_non_ascii(b: &[u8], mut i: usize) -> Option<usize> {
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let high = w & 0x8080_8080_8080_8080;
        if high != 0 {
            return Some(i + (high.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c >= 0x80).map(|p| i + p)
}

/// Lead bytes whose chars are all safe starters in the scripts most text uses:
/// Latin-1 letters (C3), basic Cyrillic (D0, D1), CJK ideographs (E4..=E9). A test
/// checks them against [`safe_leads`], which is derived from the Unicode tables.
#[inline]
fn common_safe_lead(c: u8) -> bool {
    matches!(c, 0xC3 | 0xD0 | 0xD1 | 0xE4..=0xE9)
}

/// Bit k set when `blk[k]` is a UTF-8 lead byte (0xC0..=0xFF) other than the
/// [`common_safe_lead`] ones: the chars that still need a look.
#[inline]
fn lead_mask(blk: &[u8; BLOCK]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SSE2 is part of x86_64: a few compares and a movemask per 16 bytes.
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8,
            _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let half = |k: usize| -> u32 {
            // SAFETY: reads 16 bytes inside `blk` (k is 0 or 16); SSE2 is always on.
            unsafe {
                let x = _mm_loadu_si128(blk.as_ptr().add(k) as *const __m128i);
                let set = |v: u8| _mm_set1_epi8(v as i8);
                // As i8, lead bytes are -64..=-1: above -65 and negative.
                let lead = _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8(-65)), x);
                // E4..=E9 as i8 is -28..=-23.
                let cjk = _mm_and_si128(
                    _mm_cmpgt_epi8(x, _mm_set1_epi8(-29)),
                    _mm_cmpgt_epi8(_mm_set1_epi8(-22), x),
                );
                let safe = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(x, set(0xC3)), cjk),
                    _mm_or_si128(_mm_cmpeq_epi8(x, set(0xD0)), _mm_cmpeq_epi8(x, set(0xD1))),
                );
                (_mm_movemask_epi8(_mm_andnot_si128(safe, lead)) as u32) & 0xFFFF
            }
        };
        half(0) | (half(16) << 16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lead_mask_scalar(blk)
    }
}

/// The portable definition of [`lead_mask`] (the fallback off x86_64).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
fn lead_mask_scalar(blk: &[u8]) -> u32 {
    blk.iter().enumerate().fold(0u32, |m, (k, &c)| {
        m | (((c >= 0xC0 && !common_safe_lead(c)) as u32) << k)
    })
}

/// Is `s` in NFKC? Typical text is ASCII plus non-ASCII starters whose quick check is
/// Yes; that is proven a block at a time: a branch-free mask of the block's lead bytes
/// (common-script leads left out), then one table lookup per remaining char. Any other
/// char sends the whole string to the exact quick check ([`is_nfkc_exact`]).
fn is_nfkc(s: &str) -> bool {
    let table = safe_starters();
    let safe_lead = safe_leads();
    let b = s.as_bytes();
    // `leads` bit k: b[base + k] starts a multi-byte char not known safe from its lead.
    let all_safe = |mut leads: u32, base: usize| -> bool {
        while leads != 0 {
            let at = base + leads.trailing_zeros() as usize;
            leads &= leads - 1;
            if safe_lead[b[at] as usize] {
                continue;
            }
            // `at` holds a lead byte of valid UTF-8: a char boundary.
            let c = s[at..].chars().next().expect("a lead byte starts a char");
            if !nfkc_starter(table, c) {
                return false;
            }
        }
        true
    };
    let mut i = 0;
    while let Some(full) = b.get(i..i + BLOCK) {
        let full: &[u8; BLOCK] = full.try_into().expect("BLOCK bytes");
        if !all_safe(lead_mask(full), i) {
            return is_nfkc_exact(s);
        }
        i += BLOCK;
    }
    if i < b.len() {
        let mut pad = [0u8; BLOCK]; // the short tail, padded with ASCII
        pad[..b.len() - i].copy_from_slice(&b[i..]);
        if !all_safe(lead_mask(&pad), i) {
            return is_nfkc_exact(s);
        }
    }
    true
}

/// The Unicode NFKC quick check, run only on the stretches between ASCII and safe
/// starters (which reset its state, so they cannot change the answer).
fn is_nfkc_exact(s: &str) -> bool {
    let table = safe_starters();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match next_non_ascii(b, i) {
            None => return true,
            Some(p) => i = p,
        }
        let end = b[i..]
            .iter()
            .position(|&c| c < 0x80)
            .map_or(b.len(), |p| i + p);
        // i and end sit on char boundaries (ASCII bytes or the ends).
        let run = &s[i..end];
        let mut seg = 0;
        for (j, c) in run.char_indices() {
            if nfkc_starter(table, c) {
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

/// True when `b[i..i + BLOCK]` cannot change under whitespace collapsing: no control
/// whitespace, no first two bytes of a non-ASCII White_Space char (C2 85, C2 A0,
/// E1 9A, E2 80, E2 81, E3 80: checked loosely, the slow path decides), no space
/// followed by a space (the byte after the block included). Needs `i + BLOCK < b.len()`.
#[inline]
fn block_is_plain(b: &[u8], i: usize) -> bool {
    let x = &b[i..i + BLOCK];
    let y = &b[i + 1..i + BLOCK + 1];
    let mut bad = false;
    for k in 0..BLOCK {
        let (c, d) = (x[k], y[k]);
        bad |= (c.wrapping_sub(0x09) < 5)
            | ((c == b' ') & (d == b' '))
            | ((c == 0xC2) & ((d == 0x85) | (d == 0xA0)))
            | ((c == 0xE1) & (d == 0x9A))
            | ((c == 0xE2) & ((d & 0xFE) == 0x80))
            | ((c == 0xE3) & (d == 0x80));
    }
    !bad
}

/// [`block_is_plain`] for the last (at most BLOCK) bytes of a text: padded with a
/// non-space byte, and a final space (to be trimmed) is not plain.
#[inline]
fn tail_is_plain(rest: &[u8]) -> bool {
    let mut buf = [b'x'; BLOCK + 1];
    buf[..rest.len()].copy_from_slice(rest);
    rest.last() != Some(&b' ') && block_is_plain(&buf, 0)
}

/// Stream the whitespace-collapsed form of `s` (runs of White_Space -> one space,
/// trimmed) to `emit` as slices of `s` and single spaces, without building a copy.
/// Returns its length in bytes. Typical text is a few long unchanged slices.
fn emit_collapsed(s: &str, emit: &mut impl FnMut(&[u8])) -> u64 {
    let b = s.as_bytes();
    let n = b.len();
    let ws_at = |i: usize| {
        if MAY_WS[b[i] as usize] {
            ws_len_at(b, i)
        } else {
            0
        }
    };
    let mut total = 0u64;
    // Skip leading whitespace.
    let mut i = 0;
    while i < n {
        let w = ws_at(i);
        if w == 0 {
            break;
        }
        i += w;
    }
    let mut start = i; // start of the unchanged slice being built
    while i < n {
        if i + BLOCK < n {
            if block_is_plain(b, i) {
                i += BLOCK;
                continue;
            }
        } else if tail_is_plain(&b[i..]) {
            break; // the rest is unchanged: emitted below
        }
        let stop = (i + BLOCK).min(n);
        while i < stop {
            let w = ws_at(i);
            if w == 0 || (w == 1 && b[i] == b' ' && i + 1 < n && ws_at(i + 1) == 0) {
                i += 1; // not whitespace, or a lone space between words: kept as is
                continue;
            }
            // A run that changes: end the slice (dropping a lone space a skipped block
            // left at its end), skip the run, and continue after one space.
            let mut end = i;
            if end > start && b[end - 1] == b' ' {
                end -= 1;
            }
            emit(&b[start..end]);
            total += (end - start) as u64;
            let mut j = i;
            while j < n {
                let w = ws_at(j);
                if w == 0 {
                    break;
                }
                j += w;
            }
            if j < n {
                emit(b" ");
                total += 1;
            }
            start = j;
            i = j;
            break; // back to block scanning from the next word
        }
    }
    if start < n {
        emit(&b[start..n]);
        total += (n - start) as u64;
    }
    total
}

/// Stream the normalised form of `s` to `emit`; returns its length in bytes. Text that
/// is already NFKC (all ASCII, or the quick check says so) and needs no case folding is
/// never copied; the rest is normalised into `scratch` first.
pub fn emit_normalized(
    s: &str,
    casefold: bool,
    scratch: &mut String,
    emit: &mut impl FnMut(&[u8]),
) -> u64 {
    let ascii = s.is_ascii();
    let plain = if ascii {
        !casefold || !s.bytes().any(|c| c.is_ascii_uppercase())
    } else {
        !casefold && is_nfkc(s)
    };
    if plain {
        return emit_collapsed(s, emit);
    }
    // NFKC and case folding build a copy; whitespace is still collapsed while streaming.
    scratch.clear();
    match nfkc_folded(s, casefold) {
        Cow::Borrowed(b) => scratch.push_str(b),
        Cow::Owned(o) => *scratch = o,
    }
    emit_collapsed(scratch, emit)
}

/// Normalise `s` into `out` (cleared first).
pub fn normalize_into(s: &str, casefold: bool, out: &mut String) {
    collapse_ws(&nfkc_folded(s, casefold), out);
}

/// `s` in NFKC, case folded if asked; whitespace untouched.
fn nfkc_folded(s: &str, casefold: bool) -> Cow<'_, str> {
    // NFKC only when the quick check cannot prove the text is already NFKC (ASCII and
    // most real text pass without building a copy).
    let nfkc: Cow<str> = if s.is_ascii() || is_nfkc(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfkc().collect())
    };
    match (casefold, nfkc.is_ascii()) {
        (false, _) => nfkc,
        (true, true) => Cow::Owned(nfkc.to_ascii_lowercase()),
        (true, false) => Cow::Owned(case_fold(&nfkc)),
    }
}

/// Full Unicode case folding. Runs of ASCII (most of the text, even in mixed-script data)
/// are copied whole and lowered at the end; the other characters go through `caseless`'s
/// table search (~50 ns each), remembered per thread in a small direct-mapped cache
/// because a text uses few distinct non-ASCII characters.
fn case_fold(s: &str) -> String {
    use caseless::Caseless;
    use std::cell::RefCell;
    // (character, its folding: at most 3 chars, as UTF-8, and that length); '\0' = empty slot
    type Slot = (char, [u8; 12], u8);
    thread_local! {
        static CACHE: RefCell<Vec<Slot>> = RefCell::new(vec![('\0', [0; 12], 0); 1024]);
    }
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let mut rest = s;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        while !rest.is_empty() {
            let ascii = rest
                .bytes()
                .position(|b| !b.is_ascii())
                .unwrap_or(rest.len());
            out.push_str(&rest[..ascii]);
            rest = &rest[ascii..];
            let Some(c) = rest.chars().next() else { break };
            rest = &rest[c.len_utf8()..];
            let slot = &mut cache[c as usize % 1024];
            if slot.0 != c {
                let folded: String = std::iter::once(c).default_case_fold().collect();
                let len = folded.len().min(12);
                slot.1[..len].copy_from_slice(&folded.as_bytes()[..len]);
                *slot = (c, slot.1, len as u8);
            }
            // A slot only ever holds a whole folding (at most 3 chars of 4 bytes).
            out.push_str(std::str::from_utf8(&slot.1[..slot.2 as usize]).expect("stored whole"));
        }
    });
    // Folding never yields ASCII upper case, so lowering every ASCII byte at the end only
    // touches the copied runs.
    out.make_ascii_lowercase();
    out
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

/// Hash of one row: the normalised fields' bytes streamed into xxh3-128 (no
/// concatenated copy), then each field's length (u64 LE; u64::MAX for null). The fixed
/// number of trailing lengths makes the encoding injective: field boundaries and nulls
/// count.
pub fn row_hash(fields: &[Option<&str>], casefold: bool, norm: &mut String) -> u128 {
    let mut h = Xxh3Default::new();
    let mut lens = [0u64; 8];
    let mut more = Vec::new(); // lengths past the 8th field (rare)
    for (k, f) in fields.iter().enumerate() {
        let len = match f {
            None => u64::MAX,
            Some(s) => emit_normalized(s, casefold, norm, &mut |b| h.update(b)),
        };
        if k < lens.len() {
            lens[k] = len;
        } else {
            more.push(len);
        }
    }
    for len in lens.iter().take(fields.len()).chain(&more) {
        h.update(&len.to_le_bytes());
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
        self.insert_iter(hashes.iter().map(|&h| Some(h)))
    }

    /// Like [`Dedup::insert`] where some rows take no part (None: e.g. they failed
    /// validation): such a row counts as seen, is never kept and matches nothing.
    pub fn insert_opt(&mut self, hashes: &[Option<u128>]) -> Vec<Option<u64>> {
        self.insert_iter(hashes.iter().copied())
    }

    fn insert_iter(
        &mut self,
        hashes: impl ExactSizeIterator<Item = Option<u128>>,
    ) -> Vec<Option<u64>> {
        self.first.reserve(hashes.len());
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            let idx = self.seen;
            self.seen += 1;
            let Some(h) = h else {
                out.push(None);
                continue;
            };
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
    fn case_fold_equals_caseless() {
        for s in [
            "Straße HELLO",
            "ΣΑΣ ς İstanbul",
            "ﬃ ǅ Ǆ ẞ",
            "Москва ДАННЫЕ data",
            "日本語 データ ABC",
            "\u{10400}\u{1E9E}x",
            "",
        ] {
            assert_eq!(case_fold(s), caseless::default_case_fold_str(s), "{s:?}");
        }
    }

    fn streamed(s: &str, casefold: bool) -> String {
        let mut out = Vec::new();
        let mut scratch = String::new();
        let n = emit_normalized(s, casefold, &mut scratch, &mut |b| out.extend_from_slice(b));
        assert_eq!(n as usize, out.len(), "{s:?}");
        String::from_utf8(out).expect("slices end on char boundaries")
    }

    #[test]
    fn streamed_fast_path_agrees() {
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
            " ",
            "ẞ",
        ];
        for c in cases {
            for cf in [false, true] {
                let mut a = String::new();
                normalize_into(c, cf, &mut a);
                assert_eq!(streamed(c, cf), a, "{c:?} casefold={cf}");
            }
        }
        // A lone space as the last byte of a skipped block, whitespace right after it.
        for k in 28..36 {
            let s = format!("{} \nb {}\u{a0} c ", "a".repeat(k), "d".repeat(k));
            let want = format!("{} b {} c", "a".repeat(k), "d".repeat(k));
            assert_eq!(streamed(&s, false), want, "{s:?}");
        }
    }

    /// Random texts long enough to cross the scanner's 32-byte blocks, built from the
    /// characters each branch cares about, against the plain (copying) normaliser.
    #[test]
    fn streamed_matches_copying_normaliser_on_random_text() {
        let alphabet = [
            "a",
            "b",
            "Z",
            " ",
            " ",
            " ",
            "  ",
            "\n",
            "\t",
            "\r\n",
            "\u{a0}",
            "\u{3000}",
            "\u{2009}",
            "\u{85}",
            "é",
            "e\u{301}",
            "ﬁ",
            "ー",
            "日",
            "\u{e2}\u{80}",
            "ẞ",
            "x",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m as u64) as usize
        };
        for _ in 0..4000 {
            let len = next(120);
            let mut s = String::new();
            for _ in 0..len {
                // Mostly words, so blocks are often plain and get skipped.
                if next(4) == 0 {
                    s.push_str(alphabet[next(alphabet.len())]);
                } else {
                    s.push_str(["word", "x", "lorem", " "][next(4)]);
                }
            }
            for cf in [false, true] {
                let mut a = String::new();
                normalize_into(&s, cf, &mut a);
                assert_eq!(streamed(&s, cf), a, "{s:?} casefold={cf}");
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
            assert_eq!(is_nfkc(c), is_nfkc_exact(c), "{c:?}");
            assert!(!is_nfkc(c) || c.nfkc().collect::<String>() == c, "{c:?}");
        }
    }

    /// Never a false "already NFKC" for any BMP char, alone or next to a combining mark.
    #[test]
    fn nfkc_check_has_no_false_yes_on_the_bmp() {
        for cp in 0x80..0x10000u32 {
            if let Some(c) = char::from_u32(cp) {
                // The third straddles the scanner's first block boundary.
                let long = format!("{}{c}{}{c}\u{301}", "é".repeat(15), "a".repeat(31));
                for s in [format!("a{c}b"), format!("x{c}\u{301}y{c}\u{323}"), long] {
                    assert!(
                        !is_nfkc(&s) || s.nfkc().collect::<String>() == s,
                        "U+{cp:04X}"
                    );
                }
            }
        }
    }

    #[test]
    fn lead_mask_marks_exactly_the_lead_bytes() {
        let mut blk = [0u8; BLOCK];
        for round in 0..256usize {
            for (k, b) in blk.iter_mut().enumerate() {
                *b = ((round * 37 + k * 101) % 256) as u8;
            }
            let want = blk.iter().enumerate().fold(0u32, |m, (k, &c)| {
                m | (((c >= 0xC0 && !common_safe_lead(c)) as u32) << k)
            });
            assert_eq!(lead_mask(&blk), want, "{blk:?}");
            assert_eq!(lead_mask_scalar(&blk), want, "{blk:?}");
        }
    }

    #[test]
    fn safe_leads_cover_the_common_scripts_only() {
        let t = safe_leads();
        for lead in 0..=255u8 {
            assert!(!common_safe_lead(lead) || t[lead as usize], "{lead:02X}");
        }
        for lead in [0xC3, 0xD0, 0xD1, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9] {
            assert!(t[lead], "{lead:02X}");
        }
        // C2: NBSP and other compatibility chars; CC: combining marks; E3: U+3099.
        for lead in [0x00, 0x41, 0x80, 0xC2, 0xCC, 0xE3, 0xEF, 0xF0] {
            assert!(!t[lead], "{lead:02X}");
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
        // Rows without a hash count as seen, are not kept and match nothing.
        let h3 = d.hash_rows(1, 2, |_, v| v.extend([Some("c"), Some("z")]));
        assert_eq!(
            d.insert_opt(&[None, Some(h3[0]), Some(h1[0])]),
            vec![None, Some(4), Some(0)]
        );
        assert_eq!((d.seen, d.unique()), (8, 3));
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
