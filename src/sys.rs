//! What the crate asks of the operating system beyond std: the process's peak memory and
//! handing freed heap back. The only `unsafe` in the crate is here.
#![allow(unsafe_code)]

/// Peak resident set size of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Give freed heap pages back to the system. Model loading and each analysis allocate tens of
/// MB briefly; glibc keeps freed memory in its arenas, so without this the idle daemon would
/// hold its peak forever (measured: 97 MB after loading vs the 64 MB idle target).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
