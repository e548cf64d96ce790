//! dermaedge: offline skin-lesion diagnosis support on a Raspberry-Pi-class device.
//!
//! - [`manifest`]: the model manifest (the trainer's contract) and the rules the device checks.
//! - [`model`]: verified loading into tract, running a plan.
//! - [`vision`]: decoding, the manifest's preprocessing steps, quality, masks, measurements.
//! - [`pipeline`]: one frame to one [`pipeline::Analysis`] (the device's result contract).
//! - [`capture`]: V4L2 cameras, frame conversion, device listing.
//! - [`backoff`]: the reconnect schedule (exponential backoff, pure).
//! - [`config`]: the daemon's TOML configuration.
//! - [`store`]: SQLite (captures, results, outbox) and the saved images.
//! - [`message`]: the stored, published and exported result message (JSON, CSV row).
//! - [`control`]: the command protocol (capture requests, `status`), shared by MQTT and the socket.
//! - [`mqtt`]: MQTT delivery from the outbox, status, commands, Home Assistant discovery.
//! - [`daemon`]: the service that wires them together.
//! - [`bench`]: latency, load time and memory figures.
//! - [`sys`]: peak memory and `malloc_trim`, the crate's only `unsafe`.
//! - [`cli`]: the `dermaedge` command line.
//! - [`wire`]: how enums become strings (their serde names, one way).
#![deny(unsafe_code)]

pub mod backoff;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod manifest;
pub mod message;
pub mod model;
pub mod mqtt;
pub mod pipeline;
pub mod store;
pub mod sys;
pub mod vision;
pub mod wire;
