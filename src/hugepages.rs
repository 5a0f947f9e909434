//! The broker's global allocator: the system's (glibc malloc) for every
//! block under 2 MiB; blocks of 2 MiB or more are mapped on their own,
//! 2 MiB aligned, and marked `MADV_HUGEPAGE`.
//!
//! Why: a publisher's read buffers become the message bodies a backlog
//! holds, so a growing in-memory backlog is fresh memory all the time.
//! With 4 KiB pages every page of it costs a fault, a memory-cgroup
//! charge and a zeroing; a 2 MiB page costs one of each for 512 of them
//! (perf/mem-1KiB.md). `conn` reads bulk publishers into blocks of this
//! size for that reason. Under THP `never`, or without huge pages free,
//! the kernel falls back to 4 KiB pages: the same cost as malloc's.
//!
//! Freed blocks of exactly one huge page are kept (up to `SPARE_BLOCKS`)
//! and handed out again: once a backlog is written to disk or consumed,
//! its read blocks are freed while the publishers keep asking for new
//! ones, and a reused block costs neither a fault nor the kernel's zeroing
//! of a fresh page.
//!
//! The lowest layer: it imports nothing from the crate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// The x86-64 and aarch64 (4 KiB granule) transparent huge page size.
pub const HUGE_PAGE: usize = 2 << 20;

pub struct HugeBlocks;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE
}

/// Freed one-page blocks kept for reuse: 32 MiB at most stays mapped
/// after a burst, enough for the blocks that cycle between publishers and
/// the queues that free them.
const SPARE_BLOCKS: usize = 16;

/// The spare blocks' addresses. A lock, not a lock-free stack: it is taken
/// once per 2 MiB block, and `Mutex` neither allocates nor can be
/// re-entered from here.
struct Spares {
    blocks: [usize; SPARE_BLOCKS],
    len: usize,
}

static SPARES: Mutex<Spares> = Mutex::new(Spares {
    blocks: [0; SPARE_BLOCKS],
    len: 0,
});

fn spares() -> std::sync::MutexGuard<'static, Spares> {
    // Nothing panics while it is held; a poisoned lock is still consistent.
    SPARES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A spare block, if `size` fits one page and one is kept.
fn take_spare(size: usize) -> Option<*mut u8> {
    if mapped_len(size) != Some(HUGE_PAGE) {
        return None;
    }
    let mut s = spares();
    s.len = s.len.checked_sub(1)?;
    Some(s.blocks[s.len] as *mut u8)
}

/// Keeps a freed one-page block for reuse; false if it must be unmapped.
fn keep_spare(ptr: *mut u8, size: usize) -> bool {
    if mapped_len(size) != Some(HUGE_PAGE) {
        return false;
    }
    let mut s = spares();
    if s.len == SPARE_BLOCKS {
        return false;
    }
    let at = s.len;
    s.blocks[at] = ptr as usize;
    s.len += 1;
    true
}

/// `size` rounded up to whole huge pages; None on overflow.
fn mapped_len(size: usize) -> Option<usize> {
    size.checked_next_multiple_of(HUGE_PAGE)
}

/// A fresh zeroed mapping of `size` bytes (rounded up), 2 MiB aligned.
///
/// # Safety
/// The result, if not null, is released only by `unmap` with the same size.
unsafe fn map(size: usize) -> *mut u8 {
    let Some(len) = mapped_len(size) else {
        return ptr::null_mut();
    };
    let Some(over) = len.checked_add(HUGE_PAGE) else {
        return ptr::null_mut();
    };
    // Map one huge page more than needed, then trim both ends so that what
    // remains starts on a 2 MiB boundary.
    let raw = libc::mmap(
        ptr::null_mut(),
        over,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if raw == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    let base = raw as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    if head > 0 {
        libc::munmap(raw, head);
    }
    let tail = HUGE_PAGE - head;
    if tail > 0 {
        libc::munmap((start + len) as *mut libc::c_void, tail);
    }
    // Advice only: on failure the block works with small pages.
    libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    start as *mut u8
}

/// # Safety
/// `ptr` came from `map(size)`.
unsafe fn unmap(ptr: *mut u8, size: usize) {
    if let Some(len) = mapped_len(size) {
        libc::munmap(ptr.cast(), len);
    }
}

unsafe impl GlobalAlloc for HugeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            take_spare(layout.size()).unwrap_or_else(|| map(layout.size()))
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // A fresh anonymous mapping reads as zeros already; a spare
            // would need zeroing by hand, which is what it saves.
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            if !keep_spare(ptr, layout.size()) {
                unmap(ptr, layout.size())
            }
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (is_huge(&layout), is_huge(&new)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            // Still within the same mapping: `dealloc` will find its length.
            (true, true) if mapped_len(layout.size()) == mapped_len(new_size) => ptr,
            _ => {
                let moved = self.alloc(new);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_blocks_are_aligned_zeroed_and_survive_realloc() {
        let a = HugeBlocks;
        unsafe {
            let layout = Layout::from_size_align(HUGE_PAGE + 10, 1).unwrap();
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0);
            assert!(std::slice::from_raw_parts(p, layout.size())
                .iter()
                .all(|&b| b == 0));
            p.add(HUGE_PAGE + 9).write(7);
            // Within the same 4 MiB mapping: the block stays where it is.
            let q = a.realloc(p, layout, 2 * HUGE_PAGE);
            assert_eq!(q, p);
            assert_eq!(q.add(HUGE_PAGE + 9).read(), 7);
            // Past it, and back under the threshold: the bytes move along.
            let big = Layout::from_size_align(2 * HUGE_PAGE, 1).unwrap();
            let r = a.realloc(q, big, 3 * HUGE_PAGE);
            assert_eq!(r.add(HUGE_PAGE + 9).read(), 7);
            let bigger = Layout::from_size_align(3 * HUGE_PAGE, 1).unwrap();
            let s = a.realloc(r, bigger, HUGE_PAGE + 10);
            assert_eq!(s.add(HUGE_PAGE + 9).read(), 7);
            let small = a.realloc(s, layout, 100);
            let small_layout = Layout::from_size_align(100, 1).unwrap();
            a.dealloc(small, small_layout);
        }
    }

    #[test]
    fn a_freed_block_is_handed_out_again_but_never_as_zeroed() {
        let a = HugeBlocks;
        let layout = Layout::from_size_align(HUGE_PAGE, 1).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write(9);
            a.dealloc(p, layout);
            // No other test frees one-page blocks, so the same one comes back.
            let q = a.alloc(layout);
            assert_eq!(q, p);
            let z = a.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(z, HUGE_PAGE)
                .iter()
                .all(|&b| b == 0));
            a.dealloc(z, layout);
            a.dealloc(q, layout);
        }
        // No more than SPARE_BLOCKS are kept.
        let blocks: Vec<_> = (0..SPARE_BLOCKS + 4)
            .map(|_| unsafe { a.alloc(layout) })
            .collect();
        for b in blocks {
            unsafe { a.dealloc(b, layout) };
        }
        assert_eq!(spares().len, SPARE_BLOCKS);
    }

    #[test]
    fn sizes_that_overflow_fail_instead_of_wrapping() {
        assert_eq!(mapped_len(usize::MAX), None);
        unsafe {
            assert!(map(usize::MAX - HUGE_PAGE).is_null());
        }
    }
}
