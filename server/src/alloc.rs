//! The process's memory allocator (jemalloc) and how it hands memory back: a full pass
//! holds a whole area at once, and the service must not keep that peak for good.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Memory a burst freed goes back to the system within about a second, from a background
/// thread, instead of staying with the thread that freed it (jemalloc's default of ten
/// seconds let one area's pass pile on top of the last one's). Per-key maps of a batch are
/// also much cheaper here than under glibc's malloc.
///
/// One arena, not jemalloc's four per core: kvgit's threads hand buffers to one another
/// (a page decoded on a runtime thread is hashed and freed on a blocking one, packed on a
/// third), and memory freed into another thread's arena was not reused by the next page,
/// which faulted in fresh pages instead. With one arena a first export of 100k keys took
/// a third fewer page faults and 7% less CPU; the per-thread caches still serve most
/// allocations without the arena's lock.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1\0";

/// Hands every freed page back to the system now: called after a full pass, so the next
/// area's pass (or the next batch) does not start on top of this one's peak.
pub fn release_freed() {
    /// jemalloc's `MALLCTL_ARENAS_ALL`: the command applies to every arena.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: this mallctl reads and writes nothing (null pointers, zero lengths).
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
