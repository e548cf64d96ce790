//! How values become text, one way each. Enums by their serde names: the JSON messages, the
//! SQLite columns, the CSV cells and the log lines all say `recapture`, `float32`, `mqtt` the
//! same, because they all come from the `#[serde(rename_all)]` on the type. Bytes by their
//! sha256 in lower-case hex: the model files the manifests name, the stored images.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The serde name of a unit variant (`Status::Recapture` -> "recapture"). Anything that does
/// not serialise as a plain string (never the case for the enums this is used on) gives its
/// JSON text instead of panicking.
pub fn name<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// The sha256 of `bytes`, lower-case hex (as manifests and result messages carry it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Example {
        NotDermoscopic,
    }

    #[test]
    fn names_are_the_serde_names() {
        assert_eq!(name(&Example::NotDermoscopic), "not_dermoscopic");
        assert_eq!(name(&[1, 2]), "[1,2]");
    }
}
