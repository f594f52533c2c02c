//! The kernel's memory gauge: a global allocator that counts the bytes in
//! use, so the engine can stop a query that takes the process over the
//! owner's `max_memory_mb` (see `safe_data_lang::engine::Limits`).
//!
//! The allocator underneath is jemalloc (what polars recommends): glibc's
//! malloc kept freed memory, and a long-running kernel grew by half in the
//! soak benchmark.
//!
//! It only counts; it never refuses an allocation (a failed allocation
//! aborts a Rust process, which would end the kernel, not the query).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use tikv_jemallocator::Jemalloc as Inner;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// jemalloc, counted.
pub struct Counting;

// SAFETY: every call is forwarded to jemalloc unchanged; the counter is
// updated only after a successful allocation and on deallocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { Inner.alloc(layout) };
        if !p.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { Inner.alloc_zeroed(layout) };
        if !p.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Inner.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { Inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                IN_USE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Bytes currently allocated through [`Counting`] (0 if it is not the
/// global allocator).
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// Returns what an idle kernel does not need to the OS: jemalloc's freed
/// but still mapped pages (it keeps them for seconds and purges only when
/// allocating, so an idle process never would) and the binary's clean pages
/// (see [`map_binary_sparsely`]). Called when the kernel has been idle for a
/// moment; the next request faults back the pages it uses from the page
/// cache (about a millisecond), so a busy kernel never pays for it.
pub fn trim() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena, no argument.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    const FLUSH_TCACHE: &[u8] = b"thread.tcache.flush\0";
    // SAFETY: both names are NUL-terminated mallctl names of void
    // controls, which take and return nothing (null pointers, length 0).
    // Failure (another allocator) is reported as an error code, ignored.
    unsafe {
        use std::ptr::null_mut;
        tikv_jemalloc_sys::mallctl(FLUSH_TCACHE.as_ptr().cast(), null_mut(), null_mut(), null_mut(), 0);
        tikv_jemalloc_sys::mallctl(PURGE_ALL.as_ptr().cast(), null_mut(), null_mut(), null_mut(), 0);
    }
    map_binary_sparsely();
}

/// Keeps the binary's resident pages to those the kernel uses. The binary
/// is large (polars) and a kernel touches a scattered few of its functions,
/// but the loader has read all of its relocation tables, and every page
/// fault maps up to 64 KiB around the page ("fault-around"). After start-up
/// this drops the clean (unmodified, file-backed, read-only) pages of the
/// binary, which come back from the page cache one by one when used, and asks
/// for no fault-around on them. Pages the loader modified (RELRO: relocated
/// but read-only since) are dirty and left alone. Best effort: a failure only
/// costs memory.
pub fn map_binary_sparsely() {
    let Ok(exe) = std::env::current_exe() else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let exe = exe.to_string_lossy();
    // (start, end, droppable) of each mapping of the binary.
    let mut current: Option<(usize, usize, bool)> = None;
    let mut mappings = Vec::new();
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|(a, b)| !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_hexdigit())) {
            mappings.extend(current.take());
            let perms = parts.next().unwrap_or("");
            let path = parts.nth(3);
            if path == Some(exe.as_ref())
                && let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            {
                current = Some((start, end, !perms.contains('w')));
            }
        } else if let Some(m) = current.as_mut() {
            let dirty = matches!(first, "Private_Dirty:" | "Shared_Dirty:" | "Anonymous:") && parts.next().is_some_and(|kb| kb != "0");
            if dirty {
                m.2 = false;
            }
        }
    }
    mappings.extend(current);
    for (start, end, droppable) in mappings {
        // SAFETY: the ranges are this process's own mappings of its binary,
        // page-aligned as the kernel reports them. MADV_RANDOM only changes
        // paging hints; MADV_DONTNEED is applied only to read-only mappings
        // without a modified page, whose content is the file's, so a later
        // access reads the same bytes back.
        unsafe {
            let addr = start as *mut libc::c_void;
            libc::madvise(addr, end - start, libc::MADV_RANDOM);
            if droppable {
                libc::madvise(addr, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}
