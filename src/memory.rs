//! A counting global allocator, so benches and the bench tool can measure
//! the peak extra heap memory of a call instead of estimating it.
//!
//! Install it in a binary (`#[global_allocator] static A: CountingAllocator
//! = CountingAllocator::new();`), then [`CountingAllocator::measure`] a call.
//! It counts heap bytes requested through Rust's allocator: not stack, not
//! memory mapped by other means.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator plus a live-bytes counter and a resettable peak.
#[derive(Debug)]
pub struct CountingAllocator {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingAllocator {
    /// A counter at zero.
    pub const fn new() -> Self {
        CountingAllocator {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated and not yet freed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Runs `f` and returns its result and the peak of live bytes during
    /// the call above the live bytes at its start.
    pub fn measure<R>(&self, f: impl FnOnce() -> R) -> (R, usize) {
        let base = self.live();
        self.peak.store(base, Ordering::Relaxed);
        let r = f();
        let peak = self.peak.load(Ordering::Relaxed);
        (r, peak.saturating_sub(base))
    }

    fn add(&self, n: usize) {
        let now = self.live.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.live.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        self.sub(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            self.add(new_size);
            self.sub(layout.size());
        }
        p
    }
}
