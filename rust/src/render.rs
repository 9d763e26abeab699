//! Template rendering: `{name}` placeholders, `{{` / `}}` for literal braces.
//! The template is parsed once; rows are then filled in parallel.

use rayon::prelude::*;

use crate::validate::utf8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(String),
    Var(usize),
}

/// One rendered block of rows: Arrow-style offsets and UTF-8 bytes.
pub type Block = (Vec<i64>, Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segs: Vec<Seg>,
    /// Placeholder names in order of first appearance.
    pub names: Vec<String>,
}

impl Template {
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut lit = String::new();
        let mut chars = t.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &t[i + 1..];
                    let end = rest
                        .find(['{', '}'])
                        .filter(|&e| rest.as_bytes()[e] == b'}')
                        .ok_or_else(|| format!("unclosed '{{' at position {i} of the template"))?;
                    let name = &rest[..end];
                    if name.is_empty() {
                        return Err(format!("empty placeholder '{{}}' at position {i}"));
                    }
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    }
                    let idx = match names.iter().position(|n| n == name) {
                        Some(k) => k,
                        None => {
                            names.push(name.to_string());
                            names.len() - 1
                        }
                    };
                    segs.push(Seg::Var(idx));
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => return Err(format!("single '}}' at position {i} (write '}}}}')")),
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        Ok(Template { segs, names })
    }

    /// Bytes each block of `block` rows renders to (saturating), without rendering.
    /// `get(var, row)` is as in [`Template::render`]; a null is an error naming it.
    pub fn measure<'a, F>(&self, n: usize, block: usize, get: &F) -> Result<Vec<usize>, RenderError>
    where
        F: Fn(usize, usize) -> Option<&'a [u8]> + Sync,
    {
        let block = block.max(1);
        let lit_len: usize = self
            .segs
            .iter()
            .map(|s| if let Seg::Lit(l) = s { l.len() } else { 0 })
            .sum();
        (0..n.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let (lo, hi) = (b * block, ((b + 1) * block).min(n));
                let mut bytes = lit_len.saturating_mul(hi - lo);
                for row in lo..hi {
                    for s in &self.segs {
                        if let Seg::Var(v) = s {
                            let x = get(*v, row).ok_or(RenderError::Null { row, var: *v })?;
                            bytes = bytes.saturating_add(x.len());
                        }
                    }
                }
                Ok(bytes)
            })
            .collect()
    }

    /// Render `n` rows. `get(var, row)` returns the bytes of placeholder `var` in `row`
    /// (None = null, an error naming the row); bytes that are not UTF-8 are an error
    /// naming the row, so the output is always UTF-8. Output: one (offsets, data) chunk
    /// per block of rows, so large outputs never need one contiguous buffer.
    pub fn render<'a, F>(&self, n: usize, block: usize, get: F) -> Result<Vec<Block>, RenderError>
    where
        F: Fn(usize, usize) -> Option<&'a [u8]> + Sync,
    {
        self.render_within(n, block, usize::MAX, usize::MAX, get)
    }

    /// [`Template::render`], but first measured: a block over `max_block` bytes or an
    /// output over `max_total` bytes (text plus 8 bytes of offset per row) is an error
    /// before anything is built, and every block is allocated once at its exact size.
    pub fn render_within<'a, F>(
        &self,
        n: usize,
        block: usize,
        max_block: usize,
        max_total: usize,
        get: F,
    ) -> Result<Vec<Block>, RenderError>
    where
        F: Fn(usize, usize) -> Option<&'a [u8]> + Sync,
    {
        let block = block.max(1);
        let sizes = self.measure(n, block, &get)?;
        let mut total = n.saturating_mul(8);
        for (b, &bytes) in sizes.iter().enumerate() {
            if bytes > max_block {
                let (lo, hi) = (b * block, ((b + 1) * block).min(n));
                return Err(RenderError::BlockTooLarge { lo, hi, bytes });
            }
            total = total.saturating_add(bytes);
        }
        if total > max_total {
            return Err(RenderError::TotalTooLarge { bytes: total });
        }
        sizes
            .par_iter()
            .enumerate()
            .map(|(b, &bytes)| {
                let (lo, hi) = (b * block, ((b + 1) * block).min(n));
                let mut offsets = Vec::with_capacity(hi - lo + 1);
                let mut data = Vec::with_capacity(bytes);
                offsets.push(0i64);
                for row in lo..hi {
                    for s in &self.segs {
                        match s {
                            Seg::Lit(l) => data.extend_from_slice(l.as_bytes()),
                            Seg::Var(v) => {
                                let x = get(*v, row).ok_or(RenderError::Null { row, var: *v })?;
                                let start = data.len();
                                data.extend_from_slice(x);
                                // Checked where the bytes were just copied (cache-hot).
                                utf8(&data[start..]).map_err(|at| RenderError::InvalidUtf8 {
                                    row,
                                    var: *v,
                                    at,
                                })?;
                            }
                        }
                    }
                    offsets.push(data.len() as i64);
                }
                Ok((offsets, data))
            })
            .collect()
    }
}

/// Why rendering stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Placeholder `var` (index into `names`) is null in `row`.
    Null { row: usize, var: usize },
    /// Placeholder `var`'s value in `row` is not UTF-8 from byte `at` on.
    InvalidUtf8 { row: usize, var: usize, at: usize },
    /// Rows `lo..hi` render to `bytes`, more than one block may hold.
    BlockTooLarge { lo: usize, hi: usize, bytes: usize },
    /// The whole output would take `bytes`, more than allowed.
    TotalTooLarge { bytes: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render1(t: &str, vals: &[(&str, &str)]) -> Result<String, String> {
        let tpl = Template::parse(t)?;
        let cols: Vec<&str> = tpl
            .names
            .iter()
            .map(|n| vals.iter().find(|v| v.0 == n).map(|v| v.1).unwrap())
            .collect();
        let out = tpl
            .render(1, 16, |v, _| Some(cols[v].as_bytes()))
            .map_err(|e| format!("{e:?}"))?;
        Ok(String::from_utf8(out[0].1.clone()).unwrap())
    }

    #[test]
    fn fills_and_escapes() {
        assert_eq!(
            render1("a {x} b {y} {x}", &[("x", "1"), ("y", "ü")]).unwrap(),
            "a 1 b ü 1"
        );
        assert_eq!(render1("{{x}} {x}}}", &[("x", "2")]).unwrap(), "{x} 2}");
        assert_eq!(render1("", &[]).unwrap(), "");
    }

    #[test]
    fn errors() {
        assert!(Template::parse("a {x").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a }").unwrap_err().contains("single"));
        assert!(Template::parse("{}").unwrap_err().contains("empty"));
        assert!(Template::parse("{a{b}").is_err());
        let t = Template::parse("{x}").unwrap();
        assert_eq!(
            t.render(3, 2, |_, r| if r == 2 { None } else { Some(b"v") })
                .unwrap_err(),
            RenderError::Null { row: 2, var: 0 }
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_row_and_byte() {
        let t = Template::parse("<{x}{y}>").unwrap();
        let bad: [(&[u8], usize); 5] = [
            (b"a\xc3", 1),          // truncated 2-byte sequence
            (b"\xc0\xaf", 0),       // overlong '/'
            (b"ok\xed\xa0\x80", 2), // UTF-16 surrogate
            (b"\xf0\x9f\x98", 0),   // truncated 4-byte
            (b"\xff", 0),
        ];
        for (x, at) in bad {
            let err = t
                .render(3, 2, |v, r| Some(if v == 0 && r == 2 { x } else { b"v" }))
                .unwrap_err();
            assert_eq!(
                err,
                RenderError::InvalidUtf8 { row: 2, var: 0, at },
                "{x:?}"
            );
        }
        // Two halves of 'é' are each invalid, though their concatenation is not.
        let halves = |v: usize, _: usize| Some(if v == 0 { &b"\xc3"[..] } else { b"\xa9" });
        assert_eq!(
            t.render(1, 1, halves).unwrap_err(),
            RenderError::InvalidUtf8 {
                row: 0,
                var: 0,
                at: 0
            }
        );
    }

    #[test]
    fn sizes_are_checked_before_building() {
        let t = Template::parse("ab{x}{x}").unwrap();
        let vals = ["", "c", "dddd", "ee", "f"];
        let get = |_: usize, r: usize| Some(vals[r].as_bytes());
        assert_eq!(t.measure(5, 2, &get).unwrap(), vec![6, 16, 4]);
        // Text 26 bytes + 8 bytes of offset per row.
        let out = t.render_within(5, 2, 16, 26 + 40, get).unwrap();
        assert_eq!(
            out.iter().map(|b| b.1.len()).collect::<Vec<_>>(),
            vec![6, 16, 4]
        );
        assert!(out.iter().all(|b| b.1.capacity() == b.1.len()));
        assert_eq!(
            t.render_within(5, 2, 15, usize::MAX, get).unwrap_err(),
            RenderError::BlockTooLarge {
                lo: 2,
                hi: 4,
                bytes: 16
            }
        );
        assert_eq!(
            t.render_within(5, 2, 16, 26 + 39, get).unwrap_err(),
            RenderError::TotalTooLarge { bytes: 26 + 40 }
        );
    }

    #[test]
    fn chunks_cover_all_rows() {
        let t = Template::parse("<{x}>").unwrap();
        let vals = ["a", "bb", "ccc", "d", "e"];
        let out = t.render(5, 2, |_, r| Some(vals[r].as_bytes())).unwrap();
        assert_eq!(out.len(), 3);
        let joined: Vec<u8> = out.iter().flat_map(|c| c.1.clone()).collect();
        assert_eq!(String::from_utf8(joined).unwrap(), "<a><bb><ccc><d><e>");
    }
}
