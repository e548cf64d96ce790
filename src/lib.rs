//! dermaedge: offline skin-lesion diagnosis support on a Raspberry-Pi-class device.
//!
//! - [`model`]: manifests (the trainer's contract), verified loading into tract.
//! - [`vision`]: decoding, the manifest's preprocessing steps, quality, masks, measurements.
//! - [`pipeline`]: one frame to one [`pipeline::Analysis`] (the device's result contract).
//! - [`bench`]: latency, load time and memory figures.
//! - [`cli`]: the `dermaedge` command line.

pub mod bench;
pub mod cli;
pub mod model;
pub mod pipeline;
pub mod vision;
