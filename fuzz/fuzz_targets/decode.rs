//! `cargo fuzz run decode` (nightly): arbitrary bytes through the image decoding path.
//! Any panic is a bug; errors are expected.
#![no_main]

use dermaedge::vision::{decode, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        min_side: 32,
        ..Default::default()
    };
    if let Ok(img) = decode(data, limits) {
        assert!(img.width() >= 32 && img.height() >= 32);
    }
});
