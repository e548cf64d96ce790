//! `cargo fuzz run command` (nightly): arbitrary bytes as a capture command's body, from MQTT
//! (remote) and from the local socket. Errors are expected; a panic is a bug.
#![no_main]

use dermaedge::control::CaptureRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CaptureRequest::parse(data, false);
    let _ = CaptureRequest::parse(data, true);
});
