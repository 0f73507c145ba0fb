//! In-place payload unmasking (RFC 6455 §5.3).
//!
//! Owns the XOR of a payload with its 4-byte masking key. The hot path works a
//! machine word at a time over the aligned middle of the slice (which the
//! compiler turns into SIMD lanes); only the unaligned head and tail, at most
//! seven bytes each, are done byte by byte. [`unmask_bytewise`] is the scalar
//! reference the fast path is tested and benchmarked against.

/// XORs `buf` with `key` in place, as if `buf` started `offset` bytes into the
/// payload (so a payload that arrives in pieces can be unmasked piece by piece).
///
/// Masking is its own inverse: the same call masks a client's outgoing payload.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = rotate(key, offset);
    // SAFETY: every bit pattern is a valid `u64`, so viewing the aligned middle
    // of a byte slice as words cannot create an invalid value; `align_to_mut`
    // guarantees the middle slice is aligned and in bounds.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    xor_bytes(head, key);
    key = rotate(key, head.len());
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    for w in words.iter_mut() {
        *w ^= word;
    }
    // A whole number of words is a multiple of 4 bytes: the key phase is unchanged.
    xor_bytes(tail, key);
}

/// The byte-at-a-time reference implementation (tests and benchmarks only).
#[doc(hidden)]
pub fn unmask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

#[inline]
fn xor_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The key as seen from `offset` bytes into the payload.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset & 3);
    k
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
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
