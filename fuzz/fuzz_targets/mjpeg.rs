//! `cargo fuzz run mjpeg` (nightly): arbitrary bytes as a camera's MJPEG frame (the Huffman
//! table insertion, the completeness walk, the decode). Any panic is a bug.
#![no_main]

use dermaedge::capture::{jpeg_with_huffman_tables, mjpeg_to_rgb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jpeg_with_huffman_tables(data);
    let _ = mjpeg_to_rgb(data);
});
