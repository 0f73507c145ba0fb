//! Room and client names: cleaning (SPEC §3, §4.4) and de-duplication (SPEC §4.2).
//!
//! Owns the text rules only. Splitting the request path into segments and percent-decoding them is the
//! HTTP layer's job; which names are taken in a room is [`super::presence`]'s.

use std::borrow::Cow;
use std::collections::BTreeSet;

/// Longest name kept, in Unicode scalar values (not bytes, so multi-byte names are not cut short). A
/// de-duplication suffix (`#2`) may go past it (SPEC §4.4).
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// Room used when the path's room segment cleans to nothing (SPEC §3).
pub(crate) const DEFAULT_ROOM: &str = "general";

/// Client name used when the path's client segment cleans to nothing (SPEC §3).
pub(crate) const DEFAULT_CLIENT: &str = "anonymous";

/// Cleans a raw (still percent-encoded) path segment into a name: percent-decode (invalid UTF-8 is
/// replaced by U+FFFD), remove control characters, format characters ([`is_format`]) and `/`, trim,
/// cut to 64 Unicode characters; an empty result becomes `default`.
///
/// [`super::Chat::join`] and [`super::Chat::room_messages_json`] take segments the HTTP layer has already
/// decoded and therefore apply only the second half (`sanitize_name`): decoding twice would turn a
/// literal `%41` typed by a user (sent as `%2541`) into `A`.
pub fn clean_name(raw: &str, default: &str) -> String {
    sanitize_name(&percent_decode(raw), default)
}

/// The cleaning rules of [`clean_name`] without the percent-decoding, for already decoded text.
pub(crate) fn sanitize_name(decoded: &str, default: &str) -> String {
    let kept: String = decoded
        .chars()
        .filter(|&c| !c.is_control() && !is_format(c) && c != '/')
        .collect();
    // Trim again after the cut: a space at position 64 would otherwise end the name.
    let cut: String = kept.trim().chars().take(MAX_NAME_CHARS).collect();
    let cut = cut.trim_end();
    if cut.is_empty() {
        default.to_owned()
    } else {
        cut.to_owned()
    }
}

/// The Unicode format characters (general category Cf), as ranges in code point order.
///
/// They are invisible (zero-width spaces and joiners, the soft hyphen, bidi embeddings and
/// overrides, tags), so a name holding one looks like another name: `alice` followed by U+200B
/// would pass for `alice`, and a bidi override can make a name read backwards (SPEC §3, §4.4).
/// Unicode 15 tables; checked against Python's `unicodedata.category` (Unicode 14.0 there, which
/// lists the same ranges but for U+13439–U+1343F, made Cf by Unicode 15.0). A newer Unicode may add
/// some: this table is then to be extended, nothing else depends on it.
const FORMAT_RANGES: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether `c` is a Unicode format character (category Cf, [`FORMAT_RANGES`]). ASCII and most
/// text are answered by the first comparison; the rest by a binary search over 21 ranges.
pub(crate) fn is_format(c: char) -> bool {
    if c < '\u{00AD}' {
        return false;
    }
    FORMAT_RANGES
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); a `%` not followed by two hex digits is kept as it is, since a
/// name is better shown oddly than refused. Borrows when there is nothing to decode, the common case.
pub(crate) fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Hands out the de-duplication suffixes of one base name in one room: `base#n` for the smallest free
/// `n ≥ 2` (SPEC §4.2: the later client gets the distinct name and learns it from `welcome`).
///
/// Smallest free rather than one past the highest, so that suffixes stay short in a busy room. Probing
/// `#2`, `#3`, … on every join would be quadratic in a room where everyone is `anonymous` (the default
/// name, so the likely case under load); the pool makes a join O(log k) instead.
///
/// The pool is only a hint and the caller's `taken` test has the last word, because a client may also
/// ask for `alice#3` literally. INVARIANT: every `n` in `[2, next)` whose name is free is in `freed`.
/// Dropping a pool therefore loses nothing (a new one has an empty `[2, next)`), which is how idle pools
/// are cleaned up.
#[derive(Debug)]
pub(crate) struct SuffixPool {
    /// Every suffix below this has been tried.
    next: u64,
    /// Suffixes below `next` given back since; may also hold some a literal name has taken since.
    freed: BTreeSet<u64>,
}

impl SuffixPool {
    pub(crate) fn new() -> SuffixPool {
        SuffixPool {
            next: 2,
            freed: BTreeSet::new(),
        }
    }

    /// `base#n` for the smallest `n ≥ 2` whose name is not `taken`.
    pub(crate) fn pick(&mut self, base: &str, taken: impl Fn(&str) -> bool) -> String {
        loop {
            let n = self.freed.pop_first().unwrap_or_else(|| {
                self.next += 1;
                self.next - 1
            });
            let name = format!("{base}#{n}");
            // A taken candidate is held by a literal name; it comes back through `release` when that
            // member leaves.
            if !taken(&name) {
                return name;
            }
        }
    }

    /// `base#n` is free again.
    pub(crate) fn release(&mut self, n: u64) {
        if n < self.next {
            self.freed.insert(n);
        }
    }

    /// Every suffix handed out has come back: the pool may be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        self.freed.len() as u64 + 2 >= self.next
    }
}

/// Splits `base#n` into `(base, n)` when `n` is written the way [`SuffixPool::pick`] writes it (`n ≥ 2`,
/// no sign, no leading zero), so that `alice#02` is not mistaken for `alice#2`.
pub(crate) fn split_suffix(name: &str) -> Option<(&str, u64)> {
    let (base, digits) = name.rsplit_once('#')?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (n >= 2).then_some((base, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn cleaning_table() {
        let seventy = "x".repeat(70);
        let sixty_four = "x".repeat(64);
        let snowmen_70 = "☃".repeat(70);
        let snowmen_64 = "☃".repeat(64);
        let table: &[(&str, &str)] = &[
            ("alice", "alice"),
            ("%41lice", "Alice"),
            ("  bob ", "bob"),
            ("%20%20bob%20", "bob"),
            ("a%2Fb", "ab"),
            ("a/b", "ab"),
            ("a%2fb", "ab"),
            ("a\u{0}b\u{7}c\u{1b}d\u{7f}e\u{85}f", "abcdef"),
            ("%00x%0A%0Dy%09", "xy"),
            (&seventy, &sixty_four),
            (&snowmen_70, &snowmen_64),
            ("%E2%98%83", "☃"),
            ("%FFok", "\u{FFFD}ok"),
            ("100%", "100%"),
            ("%zz%4", "%zz%4"),
            ("", "dflt"),
            ("   ", "dflt"),
            ("%2F/%0A", "dflt"),
            ("alice#2", "alice#2"),
            // Format characters (Cf) go like controls.
            ("alice%E2%80%8B", "alice"),
            ("%E2%80%8Ealice%E2%80%AE", "alice"),
            ("a\u{AD}b\u{FEFF}c\u{E0041}d\u{13439}e", "abcde"),
            ("%E2%80%8B%E2%80%8C%E2%80%8D", "dflt"),
            // Neighbours of format characters are kept.
            (
                "\u{AC}\u{AE}\u{2010}\u{2065}\u{FEFE}",
                "\u{AC}\u{AE}\u{2010}\u{2065}\u{FEFE}",
            ),
        ];
        for &(raw, want) in table {
            assert_eq!(clean_name(raw, "dflt"), want, "raw = {raw:?}");
        }
    }

    #[test]
    fn every_format_range_is_removed_and_nothing_next_to_it() {
        assert!(
            FORMAT_RANGES.windows(2).all(|w| w[0].1 < w[1].0),
            "sorted, disjoint"
        );
        for &(lo, hi) in FORMAT_RANGES {
            for cp in lo as u32..=hi as u32 {
                let c = char::from_u32(cp).unwrap();
                assert!(is_format(c), "U+{cp:04X}");
                assert_eq!(sanitize_name(&format!("x{c}y"), "d"), "xy", "U+{cp:04X}");
            }
        }
        // Everything else below U+E0080 that is not a control or `/` is kept.
        let kept = (0..0xE0080u32)
            .filter_map(char::from_u32)
            .filter(|&c| !c.is_control() && c != '/')
            .filter(|&c| !FORMAT_RANGES.iter().any(|&(lo, hi)| lo <= c && c <= hi))
            .all(|c| !is_format(c));
        assert!(kept);
    }

    #[test]
    fn cut_counts_chars_not_bytes() {
        let name = clean_name(&"é".repeat(100), "d");
        assert_eq!(name.chars().count(), 64);
        assert_eq!(name.len(), 128);
    }

    #[test]
    fn trims_after_the_cut() {
        let raw = format!("{} tail", "y".repeat(63));
        assert_eq!(clean_name(&raw, "d"), "y".repeat(63));
    }

    #[test]
    fn sanitize_does_not_decode() {
        assert_eq!(sanitize_name("%41 ", "d"), "%41");
        assert_eq!(sanitize_name("", DEFAULT_ROOM), "general");
    }

    /// The rule itself, by brute force.
    fn reference(wanted: &str, taken: &HashSet<String>) -> String {
        if !taken.contains(wanted) {
            return wanted.to_owned();
        }
        (2u64..)
            .map(|n| format!("{wanted}#{n}"))
            .find(|c| !taken.contains(c))
            .unwrap()
    }

    #[test]
    fn suffixes_take_the_smallest_free_number() {
        let mut taken: HashSet<String> = HashSet::new();
        let mut pool = SuffixPool::new();
        let add = |pool: &mut SuffixPool, taken: &mut HashSet<String>| {
            let name = pool.pick("alice", |n| taken.contains(n));
            taken.insert(name.clone());
            name
        };
        taken.insert("alice".into());
        assert_eq!(add(&mut pool, &mut taken), "alice#2");
        assert_eq!(add(&mut pool, &mut taken), "alice#3");
        taken.insert("alice#4".into()); // a literal name
        assert_eq!(add(&mut pool, &mut taken), "alice#5");
        taken.remove("alice#2");
        pool.release(2);
        assert_eq!(add(&mut pool, &mut taken), "alice#2");
        assert!(!pool.is_idle());
    }

    #[test]
    fn split_suffix_table() {
        assert_eq!(split_suffix("a#2"), Some(("a", 2)));
        assert_eq!(split_suffix("a#2#13"), Some(("a#2", 13)));
        assert_eq!(split_suffix("#7"), Some(("", 7)));
        for no in [
            "a",
            "a#",
            "a#1",
            "a#0",
            "a#02",
            "a#+2",
            "a#x",
            "a#99999999999999999999",
        ] {
            assert_eq!(split_suffix(no), None, "{no}");
        }
    }

    /// Random joins and leaves, literal `x#n` names included: the pools must always agree with the
    /// brute-force rule.
    #[test]
    fn pools_match_the_reference() {
        use std::collections::HashMap;
        let wanted = ["x", "x", "x", "x#2", "x#3", "x#2#2", "y", "x#04"];
        let mut taken: HashSet<String> = HashSet::new();
        let mut pools: HashMap<String, SuffixPool> = HashMap::new();
        let mut in_room: Vec<String> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..5_000 {
            if in_room.is_empty() || rand(5) < 3 {
                let w = wanted[rand(wanted.len())];
                let want = reference(w, &taken);
                let got = if taken.contains(w) {
                    let pool = pools.entry(w.to_owned()).or_insert_with(SuffixPool::new);
                    pool.pick(w, |n| taken.contains(n))
                } else {
                    w.to_owned()
                };
                assert_eq!(got, want);
                taken.insert(got.clone());
                in_room.push(got);
            } else {
                let gone = in_room.swap_remove(rand(in_room.len()));
                taken.remove(&gone);
                if let Some((base, n)) = split_suffix(&gone) {
                    if let Some(pool) = pools.get_mut(base) {
                        pool.release(n);
                        if pool.is_idle() {
                            pools.remove(base);
                        }
                    }
                }
            }
        }
    }
}
