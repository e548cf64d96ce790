//! The result message: what the device stores for each capture, publishes on
//! `<prefix>/<device>/result` and exports (`dermaedge results`), as JSON (docs/mqtt.md,
//! docs/message.schema.json) or as one CSV row. The contract with dashboards lives here; the
//! transports (the MQTT publisher in mqtt/, the CLI export) only move it.

use serde_json::{json, Value};

use crate::manifest::CLASSES;
use crate::pipeline::Analysis;

/// What goes into a result message (docs/mqtt.md, docs/message.schema.json).
pub struct MessageParts<'a> {
    pub id: &'a str,
    pub device_id: &'a str,
    pub captured_at: &'a str,
    pub source: &'a str,
    pub trigger: &'a str,
    pub context: Option<&'a serde_json::Value>,
    pub image_sha256: &'a str,
    pub media_type: &'a str,
    /// The frame is saved on the device.
    pub stored: bool,
    /// The frame's bytes, only when the config asks for images in messages.
    pub image: Option<&'a [u8]>,
    pub analysis: &'a Analysis,
}

/// Version of the result message; bump on any incompatible change (docs/mqtt.md).
pub const MESSAGE_VERSION: u32 = 1;

/// The result message: the JSON published on `<prefix>/<device>/result` and kept in the
/// database as the exported record.
pub fn result_message(p: &MessageParts) -> String {
    use base64::Engine;
    let mut image = json!({
        "sha256": p.image_sha256,
        "media_type": p.media_type,
        "stored": p.stored,
    });
    if let Some(bytes) = p.image {
        image["data_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    json!({
        "message_version": MESSAGE_VERSION,
        "id": p.id,
        "device_id": p.device_id,
        "captured_at": p.captured_at,
        "source": p.source,
        "trigger": p.trigger,
        "context": p.context,
        "image": image,
        "result": p.analysis,
    })
    .to_string()
}

/// The CSV export's header line (without the newline).
pub fn csv_header() -> String {
    format!(
        "id,captured_at,device_id,source,trigger,status,recapture_reasons,top_class,{},malignancy_score,melanoma_flag,lesion_id,body_site",
        CLASSES.join(",")
    )
}

/// One stored message as a CSV row (without the newline); a refused frame has its reasons and
/// empty classification cells.
pub fn csv_row(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => csv_field(s),
        other => other.to_string(),
    };
    let c = &v["result"]["classification"];
    let probs: Vec<String> = CLASSES.iter().map(|k| s(&c["probabilities"][k])).collect();
    // One cell: the reasons joined by ';' (empty for a classified frame).
    let reasons: Vec<&str> = v["result"]["recapture_reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    [
        s(&v["id"]),
        s(&v["captured_at"]),
        s(&v["device_id"]),
        s(&v["source"]),
        s(&v["trigger"]),
        s(&v["result"]["status"]),
        csv_field(&reasons.join(";")),
        s(&c["top_class"]),
        probs.join(","),
        s(&c["malignancy_score"]),
        s(&c["melanoma_flag"]),
        s(&v["context"]["lesion_id"]),
        s(&v["context"]["body_site"]),
    ]
    .join(",")
}

/// Quote a CSV field when it needs it. A text cell a spreadsheet would run as a formula (it
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return: a lesion id sent by anyone who
/// may trigger a capture) gets a leading `'`, so it shows as the text it is.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_row_quotes_and_joins_the_reasons() {
        let v = json!({
            "id": "a", "captured_at": "t", "device_id": "d", "source": "file", "trigger": "socket",
            "context": {"lesion_id": "L,7", "body_site": "back \"left\""},
            "result": {"status": "recapture", "recapture_reasons": ["blurred", "no_lesion"],
                       "classification": null},
        });
        // 7 cells, then 11 empty ones (top class, 8 probabilities, score, flag), then 2
        let want = format!(
            "a,t,d,file,socket,recapture,blurred;no_lesion{}\"L,7\",\"back \"\"left\"\"\"",
            ",".repeat(12)
        );
        assert_eq!(csv_row(&v), want);
        assert_eq!(csv_header().split(',').count(), 20);
    }

    #[test]
    fn csv_cells_that_look_like_formulas_stay_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-2+3"), "'-2+3");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("back, left"), "\"back, left\"");
        assert_eq!(csv_field("L-7"), "L-7");
    }
}
