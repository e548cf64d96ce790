//! Home Assistant MQTT discovery: the retained config topics that make the result's main
//! fields appear as sensors, published at every connect (Home Assistant may have restarted).

use serde_json::json;

use super::Topics;
use crate::config::Config;

/// Home Assistant MQTT discovery: retained config topics for the result's main fields.
pub(super) fn discovery(config: &Config, topics: &Topics) -> Vec<(String, String, bool)> {
    let dev = &config.device_id;
    let device = json!({
        "identifiers": [format!("dermaedge_{dev}")],
        "name": format!("dermaedge {dev}"),
        "manufacturer": "dermaedge",
        "model": "skin-lesion analysis support",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let classification = "value_json.result.classification";
    let sensors = [
        (
            "sensor",
            "status",
            "Frame status",
            "{{ value_json.result.status if value_json.result else 'error' }}".to_string(),
            None,
        ),
        (
            "sensor",
            "recapture_reasons",
            "Recapture reasons",
            "{{ value_json.result.recapture_reasons | join(', ') if value_json.result and value_json.result.recapture_reasons else 'none' }}".to_string(),
            None,
        ),
        (
            "sensor",
            "top_class",
            "Top class",
            format!("{{{{ {classification}.top_class if {classification} else 'none' }}}}"),
            None,
        ),
        (
            "sensor",
            "melanoma_probability",
            "Melanoma probability",
            format!("{{{{ ({classification}.probabilities.MEL * 100) | round(1) if {classification} else 0 }}}}"),
            Some("%"),
        ),
        (
            "sensor",
            "malignancy_score",
            "Malignancy score",
            format!("{{{{ {classification}.malignancy_score | round(3) if {classification} else 0 }}}}"),
            None,
        ),
        (
            "binary_sensor",
            "melanoma_flag",
            "Melanoma flag",
            format!("{{{{ 'ON' if {classification} and {classification}.melanoma_flag else 'OFF' }}}}"),
            None,
        ),
    ];
    sensors
        .into_iter()
        .map(|(component, key, name, template, unit)| {
            let mut body = json!({
                "name": name,
                "unique_id": format!("dermaedge_{dev}_{key}"),
                "object_id": format!("dermaedge_{dev}_{key}"),
                "state_topic": topics.result,
                "value_template": template,
                "availability_topic": topics.status,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
            });
            if let Some(u) = unit {
                body["unit_of_measurement"] = json!(u);
            }
            (
                format!(
                    "{}/{component}/dermaedge_{dev}/{key}/config",
                    config.mqtt.discovery_prefix
                ),
                body.to_string(),
                true,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_topics_are_retained_json() {
        let mut c = Config::default();
        c.mqtt.home_assistant = true;
        let d = discovery(&c, &Topics::new(&c));
        assert_eq!(d.len(), 6);
        for (topic, body, retain) in d {
            assert!(topic.starts_with("homeassistant/") && topic.ends_with("/config"));
            assert!(retain);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["state_topic"], "dermaedge/dermaedge/result");
        }
    }
}
