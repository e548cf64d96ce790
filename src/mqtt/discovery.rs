//! Home Assistant MQTT discovery: the retained config topics that make the result's main
//! fields appear as sensors, published at every connect (Home Assistant may have restarted).

use serde_json::json;

use super::Topics;
use crate::config::Config;

/// One Home Assistant entity read from the result message.
struct Sensor {
    component: &'static str,
    key: &'static str,
    name: &'static str,
    value_template: &'static str,
    unit: Option<&'static str>,
}

/// A frame with an error has no `result`, and one that needs recapturing no classification:
/// every template has a value for those, so the entity never goes "unknown".
const SENSORS: &[Sensor] = &[
    Sensor {
        component: "sensor",
        key: "status",
        name: "Frame status",
        value_template: "{{ value_json.result.status if value_json.result else 'error' }}",
        unit: None,
    },
    Sensor {
        component: "sensor",
        key: "recapture_reasons",
        name: "Recapture reasons",
        value_template: "{{ value_json.result.recapture_reasons | join(', ') if value_json.result and value_json.result.recapture_reasons else 'none' }}",
        unit: None,
    },
    Sensor {
        component: "sensor",
        key: "top_class",
        name: "Top class",
        value_template: "{{ value_json.result.classification.top_class if value_json.result.classification else 'none' }}",
        unit: None,
    },
    Sensor {
        component: "sensor",
        key: "melanoma_probability",
        name: "Melanoma probability",
        value_template: "{{ (value_json.result.classification.probabilities.MEL * 100) | round(1) if value_json.result.classification else 0 }}",
        unit: Some("%"),
    },
    Sensor {
        component: "sensor",
        key: "malignancy_score",
        name: "Malignancy score",
        value_template: "{{ value_json.result.classification.malignancy_score | round(3) if value_json.result.classification else 0 }}",
        unit: None,
    },
    Sensor {
        component: "binary_sensor",
        key: "melanoma_flag",
        name: "Melanoma flag",
        value_template: "{{ 'ON' if value_json.result.classification and value_json.result.classification.melanoma_flag else 'OFF' }}",
        unit: None,
    },
];

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
    SENSORS
        .iter()
        .map(|s| {
            let key = s.key;
            let mut body = json!({
                "name": s.name,
                "unique_id": format!("dermaedge_{dev}_{key}"),
                "object_id": format!("dermaedge_{dev}_{key}"),
                "state_topic": topics.result,
                "value_template": s.value_template,
                "availability_topic": topics.status,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
            });
            if let Some(u) = s.unit {
                body["unit_of_measurement"] = json!(u);
            }
            let topic = format!(
                "{}/{}/dermaedge_{dev}/{key}/config",
                config.mqtt.discovery_prefix, s.component
            );
            (topic, body.to_string(), true)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_topics_are_retained_json() {
        let mut c = Config {
            device_id: "dermaedge".into(),
            ..Default::default()
        };
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
