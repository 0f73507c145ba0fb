//! In-place payload unmasking (RFC 6455 §5.3).
//!
//! Owns the XOR of a payload with its 4-byte masking key. On x86-64 the hot
//! path XORs 32 bytes per instruction with AVX2 when the CPU has it (checked
//! once at run time, then a cached load), else 16 with SSE2 (every x86-64 CPU
//! has it), over unaligned loads and stores, after a short head that brings the
//! pointer to a 32-byte boundary so no store straddles two cache lines. Short
//! slices, heads and tails go a `u64` at a time, then at most seven bytes one
//! by one; that word loop is also the whole path on other architectures.
//! [`unmask_bytewise`] is the scalar reference the fast path is tested and
//! benchmarked against (`benches/unmask.rs`, numbers in `docs/benchmarks.md`).

/// Slices shorter than this skip the vector path: the head alignment and the
/// feature check would cost more than they save.
const VECTOR_MIN: usize = 128;

/// XORs `buf` with `key` in place, as if `buf` started `offset` bytes into the
/// payload (so a payload that arrives in pieces can be unmasked piece by piece).
///
/// Masking is its own inverse: the same call masks a client's outgoing payload.
/// Any alignment of `buf` is fine.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= VECTOR_MIN {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the only precondition of calling a `#[target_feature]`
            // function is that the CPU supports the feature, checked just above.
            unsafe { x86::unmask_avx2(buf, key) };
        } else {
            x86::unmask_sse2(buf, key);
        }
        return;
    }
    xor_words(buf, key);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
        _mm256_xor_si256, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
    };

    use super::{align_head, xor_words};

    /// 32 bytes per XOR, four per loop turn; `key` is in the phase of `buf[0]`.
    #[target_feature(enable = "avx2")]
    pub(super) fn unmask_avx2(buf: &mut [u8], key: [u8; 4]) {
        let (body, key) = align_head(buf, key);
        // Each 32-bit lane holds the key in memory order (x86 is little-endian).
        let mask = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut blocks = body.chunks_exact_mut(128);
        for block in &mut blocks {
            for lane in block.chunks_exact_mut(32) {
                let p = lane.as_mut_ptr().cast::<__m256i>();
                // SAFETY: `lane` is 32 bytes, valid for reads and writes through
                // `p`; `loadu`/`storeu` accept any alignment.
                unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), mask)) };
            }
        }
        let mut lanes = blocks.into_remainder().chunks_exact_mut(32);
        for lane in &mut lanes {
            let p = lane.as_mut_ptr().cast::<__m256i>();
            // SAFETY: as above, `lane` is 32 bytes.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), mask)) };
        }
        // Whole blocks and lanes are multiples of 4 bytes: the phase is unchanged.
        xor_words(lanes.into_remainder(), key);
    }

    /// 16 bytes per XOR, eight per loop turn; `key` is in the phase of `buf[0]`.
    pub(super) fn unmask_sse2(buf: &mut [u8], key: [u8; 4]) {
        let (body, key) = align_head(buf, key);
        // SAFETY: SSE2 is part of the x86-64 baseline: every such CPU has it.
        let mask = unsafe { _mm_set1_epi32(i32::from_ne_bytes(key)) };
        let mut blocks = body.chunks_exact_mut(128);
        for block in &mut blocks {
            for lane in block.chunks_exact_mut(16) {
                let p = lane.as_mut_ptr().cast::<__m128i>();
                // SAFETY: `lane` is 16 bytes, valid for reads and writes through
                // `p`; `loadu`/`storeu` accept any alignment. SSE2 is part of
                // the x86-64 baseline.
                unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), mask)) };
            }
        }
        let mut lanes = blocks.into_remainder().chunks_exact_mut(16);
        for lane in &mut lanes {
            let p = lane.as_mut_ptr().cast::<__m128i>();
            // SAFETY: as above, `lane` is 16 bytes.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), mask)) };
        }
        xor_words(lanes.into_remainder(), key);
    }
}

/// Unmasks the bytes before the first 32-byte boundary (all of `buf` if it has
/// none); returns the rest, which starts on the boundary, and its key phase.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn align_head(buf: &mut [u8], key: [u8; 4]) -> (&mut [u8], [u8; 4]) {
    let head = buf.as_ptr().align_offset(32).min(buf.len());
    let (head, body) = buf.split_at_mut(head);
    xor_words(head, key);
    (body, rotate(key, head.len()))
}

/// A `u64` at a time, then at most seven bytes; `key` is in the phase of `buf[0]`.
#[inline(always)]
fn xor_words(buf: &mut [u8], key: [u8; 4]) {
    // The same 32 bits in both halves: memory order holds whatever the endianness.
    let word = (u32::from_ne_bytes(key) as u64) * 0x1_0000_0001;
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes((&*w).try_into().expect("bug: 8-byte chunk")) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    // Whole words are multiples of 4 bytes: the phase is unchanged.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The byte-at-a-time reference implementation (tests and benchmarks only).
#[doc(hidden)]
pub fn unmask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

/// The key as seen from `offset` bytes into the payload.
#[inline(always)]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    // Byte `i` of the result is `key[(offset + i) & 3]`; as a little-endian
    // word that is a right rotation (a shift, not `<[u8]>::rotate_left`'s memmove).
    (u32::from_le_bytes(key).rotate_right(8 * (offset & 3) as u32)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_for_every_length_alignment_and_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..8 {
            for len in 0..(data.len() - align) {
                for offset in 0..4 {
                    let mut fast = data.clone();
                    let mut slow = data.clone();
                    unmask(&mut fast[align..align + len], key, offset);
                    unmask_bytewise(&mut slow[align..align + len], key, offset);
                    assert_eq!(fast, slow, "align {align} len {len} offset {offset}");
                }
            }
        }
    }

    /// Every path checked directly, whatever this CPU picks for `unmask`.
    #[test]
    fn each_path_matches_reference() {
        type Path = fn(&mut [u8], [u8; 4]);
        let mut paths: Vec<(&str, Path)> = vec![("words", xor_words)];
        #[cfg(target_arch = "x86_64")]
        {
            paths.push(("sse2", x86::unmask_sse2));
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(("avx2", |b, k| {
                    // SAFETY: AVX2 support was checked just above.
                    unsafe { x86::unmask_avx2(b, k) }
                }));
            }
        }
        let key = [0x9a, 0xbc, 0xde, 0xf0];
        let data: Vec<u8> = (0..700u32).map(|i| (i * 13 + 1) as u8).collect();
        for (name, path) in paths {
            for align in 0..33 {
                for len in (0..(data.len() - align)).step_by(5) {
                    for offset in 0..4 {
                        let mut fast = data.clone();
                        let mut slow = data.clone();
                        path(&mut fast[align..align + len], rotate(key, offset));
                        unmask_bytewise(&mut slow[align..align + len], key, offset);
                        assert_eq!(fast, slow, "{name} align {align} len {len} offset {offset}");
                    }
                }
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut whole = data.clone();
        unmask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let mut at = 0;
        for step in [1, 5, 13, 64, 3, 200, 714] {
            unmask(&mut pieces[at..at + step], key, at);
            at += step;
        }
        assert_eq!(at, data.len());
        assert_eq!(whole, pieces);
    }

    #[test]
    fn rotate_is_the_key_seen_from_offset() {
        let key = [1, 2, 3, 4];
        assert_eq!(rotate(key, 0), [1, 2, 3, 4]);
        assert_eq!(rotate(key, 1), [2, 3, 4, 1]);
        assert_eq!(rotate(key, 2), [3, 4, 1, 2]);
        assert_eq!(rotate(key, 7), [4, 1, 2, 3]);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
