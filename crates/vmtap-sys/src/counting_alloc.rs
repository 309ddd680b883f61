//! A global allocator that counts, per thread, the heap in use and its
//! peak (feature `counting-alloc`, for tests that bound memory). It is
//! here so that every `unsafe` block of vmtap stays in this crate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = NOW.try_with(|n| {
        let v = n.get() + delta;
        n.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

/// The system allocator, counting per thread. Install it in a test binary:
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
pub struct CountingAlloc;

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; the counting touches only thread-local integers.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` on a new thread; returns its result and the most heap that
/// thread held at once above what it started with (when [`CountingAlloc`]
/// is the global allocator; 0 otherwise).
pub fn thread_peak<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, isize) {
    std::thread::spawn(move || {
        let base = NOW.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let r = f();
        (r, PEAK.with(Cell::get) - base)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
