//! What the crate asks of the operating system beyond std: the process's peak memory, handing
//! freed heap back, and whether the clock is synchronised. The only `unsafe` in the crate is
//! here.
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

/// Whether the kernel says the system clock is synchronised (NTP or the like): a Pi without a
/// real-time clock boots at the time it last shut down, and its first NTP sync jumps the
/// clock. None where the kernel cannot tell (not Linux with glibc, or the call failed).
pub fn clock_synchronized() -> Option<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: a zeroed timex (modes = 0) only reads the kernel's clock state into it.
        let mut t: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut t) };
        if state < 0 {
            return None;
        }
        Some(state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
