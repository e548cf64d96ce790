//! `cargo fuzz run config` (nightly): arbitrary text as the daemon's TOML config. Every bad
//! file gets an error naming the key; a panic is a bug.
#![no_main]

use dermaedge::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
});
