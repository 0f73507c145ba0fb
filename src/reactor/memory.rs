//! Giving freed heap back to the kernel after a burst.
//!
//! A burst (thousands of clients joining one room, each join an event for every member; a flood into
//! slow consumers) grows the heap by per-connection backlogs and wide `welcome`s. They are all freed
//! when the burst drains, but glibc's allocator keeps freed pages that are not at the top of the heap,
//! so the daemon's RSS would stay at the burst's peak for good (215 MB after a 5,000-member room had
//! emptied, against 34 MB while it was full and settled). Every housekeeping tick the reactor asks the
//! allocator how much it holds free and, above [`WORTH_TRIMMING`], hands it back with `malloc_trim`.
//! In steady state the check finds little free and does nothing.

/// Free heap worth a `malloc_trim`: below this, keeping it for the next burst is cheaper.
pub(crate) const WORTH_TRIMMING: usize = 16 << 20;

/// Returns free heap to the kernel if the allocator holds at least [`WORTH_TRIMMING`] of it; returns
/// how much it held, when it trimmed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_heap() -> Option<usize> {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it takes no pointers.
    let info = unsafe { libc::mallinfo2() };
    // `fordblks`: free bytes in the main heap and mmapped arenas; `keepcost`: the free top chunk,
    // which glibc already trims on its own.
    let free = info.fordblks.saturating_sub(info.keepcost);
    if free < WORTH_TRIMMING {
        return None;
    }
    // SAFETY: malloc_trim takes a plain size and may only release free pages (madvise) and shrink
    // the heap's top; no live allocation moves.
    unsafe { libc::malloc_trim(0) };
    Some(free)
}

/// Other allocators (musl, macOS) return memory on their own terms: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_heap() -> Option<usize> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn a_drained_burst_is_given_back() {
        // 64 MiB in 64 KiB blocks, then free all but every 16th, so the free memory is spread
        // through the heap and cannot go back by shrinking its top.
        let mut blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks
            .drain(..)
            .enumerate()
            .filter_map(|(i, b)| (i % 16 == 0).then_some(b))
            .collect();
        let before = rss_bytes();
        let freed = release_free_heap();
        let after = rss_bytes();
        assert!(freed.is_some_and(|f| f >= WORTH_TRIMMING), "{freed:?}");
        assert!(
            before - after >= 32 << 20,
            "RSS {before} -> {after}: the freed blocks were not returned"
        );
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 16) as u8));
    }
}
