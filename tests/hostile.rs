//! A deterministic fuzz pass for CI over the other inputs strangers can hand the device: camera
//! MJPEG frames, capture command bodies (MQTT, socket), config files, and the metadata
//! stripper that runs on every stored file. Thousands of mutations of valid inputs; nothing
//! may panic, and what is accepted must still be sound. The cargo-fuzz targets in fuzz/
//! (`mjpeg`, `command`, `config`, `decode`) explore further.

use dermaedge::capture::{jpeg_with_huffman_tables, mjpeg_to_rgb};
use dermaedge::config::Config;
use dermaedge::control::CaptureRequest;
use dermaedge::vision::strip_metadata;

/// xorshift64: the same mutations on every run and machine.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Flip bytes, cut the end, or drop a run: the damage real transfers and attackers do.
    fn mutate(&mut self, original: &[u8]) -> Vec<u8> {
        let mut bytes = original.to_vec();
        if bytes.is_empty() {
            return bytes;
        }
        match self.next() % 3 {
            0 => {
                for _ in 0..(1 + self.next() % 8) {
                    let at = (self.next() as usize) % bytes.len();
                    bytes[at] = self.next() as u8;
                }
            }
            1 => bytes.truncate((self.next() as usize) % bytes.len()),
            _ => {
                let at = (self.next() as usize) % bytes.len();
                let n = (self.next() as usize % 16).min(bytes.len() - at);
                bytes.drain(at..at + n);
            }
        }
        bytes
    }
}

fn small_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .unwrap();
    out
}

#[test]
fn mutated_camera_frames_never_panic() {
    let frame = small_jpeg();
    let mut m = Mutator(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let bytes = m.mutate(&frame);
        let _ = jpeg_with_huffman_tables(&bytes);
        if let Ok(rgb) = mjpeg_to_rgb(&bytes) {
            assert!(rgb.width() > 0 && rgb.height() > 0);
        }
        // Whatever the stripper keeps is never longer than what it was given.
        if let Ok(clean) = strip_metadata(&bytes) {
            assert!(clean.len() <= bytes.len());
        }
    }
}

#[test]
fn mutated_command_bodies_never_panic_and_never_name_a_file_remotely() {
    let body = br#"{"request_id":"r1","lesion_id":"L7","body_site":"back","age":54,"sex":"female","file":"/tmp/x.jpg"}"#;
    let mut m = Mutator(0xD1B5_4A32_D192_ED03);
    for _ in 0..3000 {
        let bytes = m.mutate(body);
        if let Ok(r) = CaptureRequest::parse(&bytes, false) {
            assert!(r.file.is_none(), "a remote request named a file: {r:?}");
            assert!(r.age.is_none_or(|a| a <= 130));
        }
        let _ = CaptureRequest::parse(&bytes, true);
    }
}

#[test]
fn mutated_configs_never_panic_and_what_parses_is_valid() {
    let text = include_str!("../systemd/dermaedge.toml");
    let mut m = Mutator(0x2545_F491_4F6C_DD1D);
    for _ in 0..1500 {
        let bytes = m.mutate(text.as_bytes());
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(c) = Config::parse(text) {
            // Parsing validates: what comes back passes the checks again.
            assert!(c.validate().is_ok());
        }
    }
}
