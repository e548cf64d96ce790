//! MQTT delivery: drains the outbox in order, marks a message delivered only on its PUBACK,
//! keeps `<prefix>/<device>/status` (retained, with a last will), answers commands, and
//! publishes Home Assistant discovery topics.
//!
//! rumqttc keeps nothing on disk and re-sends its own in-flight messages after a reconnect; we
//! rely on neither. Every connection gets a fresh client with a clean session, and the outbox
//! in SQLite says what is still to send: after a reconnect or a restart, everything not yet
//! acknowledged goes out again from the oldest (at least once; consumers deduplicate by `id`).
//! A PUBACK is matched to its outbox row through the order of publishes on the connection:
//! rumqttc reports `Outgoing::Publish(pkid)` in the order the publishes were requested.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, timeout, Instant};

use crate::config::{read_secret, Config};
use crate::control::{Commands, Link};
use crate::store::Store;

mod discovery;
mod tls;
mod window;

use discovery::discovery;
pub use tls::check_tls;
use tls::tls_config;
use window::PubackWindow;

/// The topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub status: String,
    pub result: String,
    pub commands: String,
    base: String,
}

impl Topics {
    pub fn new(config: &Config) -> Topics {
        let base = format!("{}/{}", config.mqtt.prefix, config.device_id);
        Topics {
            status: format!("{base}/status"),
            result: format!("{base}/result"),
            commands: format!("{base}/cmd/+"),
            base,
        }
    }

    /// The command name of a topic `<base>/cmd/<name>`, if it is one.
    pub fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let name = topic.strip_prefix(&self.base)?.strip_prefix("/cmd/")?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    pub fn reply(&self, name: &str) -> String {
        format!("{}/cmd/{name}/reply", self.base)
    }
}

pub struct Publisher {
    config: Arc<Config>,
    topics: Topics,
    store: Store,
    /// Woken when the worker records a result.
    outbox: Arc<Notify>,
    commands: Commands,
    link: watch::Sender<Link>,
    /// true: finish (deliver what is pending, for `flush` at most), say offline, disconnect.
    shutdown: watch::Receiver<bool>,
    flush: Duration,
    /// Set when the shutdown comes: deliver what is pending until then.
    stop_at: Option<Instant>,
}

enum Ended {
    Shutdown,
    Lost { was_connected: bool, why: String },
}

impl Publisher {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        outbox: Arc<Notify>,
        commands: Commands,
        link: watch::Sender<Link>,
        shutdown: watch::Receiver<bool>,
        flush: Duration,
    ) -> Publisher {
        Publisher {
            topics: Topics::new(&config),
            config,
            store,
            outbox,
            commands,
            link,
            shutdown,
            flush,
            stop_at: None,
        }
    }

    /// Connect, deliver, reconnect with backoff; returns after a shutdown.
    pub async fn run(mut self) {
        let host = self.config.mqtt.host.clone().unwrap_or_default();
        let port = self.config.mqtt.port;
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.stop_at.is_none() && *self.shutdown.borrow() {
                self.stop_at = Some(Instant::now() + self.flush);
            }
            if self.done_stopping() {
                return;
            }
            let _ = self.link.send(Link::Connecting);
            match self.session().await {
                Ended::Shutdown => return,
                Ended::Lost { was_connected, why } => {
                    if was_connected {
                        backoff = Duration::from_secs(1);
                    }
                    log::warn!(
                        "mqtt {host}:{port}: {why}; retrying in {} s (results are kept in the outbox)",
                        backoff.as_secs()
                    );
                }
            }
            let _ = self.link.send(Link::Connecting);
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = self.shutdown.changed(), if self.stop_at.is_none() => {
                    self.stop_at = Some(Instant::now() + self.flush);
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Stopping, and either past the deadline or with nothing left to deliver.
    fn done_stopping(&self) -> bool {
        match self.stop_at {
            None => false,
            Some(at) => {
                Instant::now() >= at
                    || self
                        .store
                        .pending(0, 1)
                        .map_or(true, |rows| rows.is_empty())
            }
        }
    }

    fn options(&self) -> Result<MqttOptions, String> {
        let m = &self.config.mqtt;
        let id = m
            .client_id
            .clone()
            .unwrap_or_else(|| format!("dermaedge-{}", self.config.device_id));
        let mut o = MqttOptions::new(id, m.host.clone().unwrap_or_default(), m.port);
        o.set_keep_alive(Duration::from_secs(m.keep_alive_s));
        // Our outbox is the session state; see the module comment.
        o.set_clean_session(true);
        o.set_last_will(LastWill::new(
            &self.topics.status,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        o.set_inflight((m.window + 16).min(u16::MAX as usize) as u16);
        // Oversized commands are answered with an error, not by dropping the connection.
        o.set_max_packet_size(m.max_command_bytes.max(1 << 20), 64 << 20);
        if let (Some(user), Some(file)) = (&m.username, &m.password_file) {
            let secret = read_secret("mqtt.password_file", file)?;
            let pw = String::from_utf8(secret.0)
                .map_err(|_| "mqtt.password_file: the password is not UTF-8".to_string())?;
            o.set_credentials(user, pw.trim_end_matches(['\n', '\r']));
        } else if let Some(user) = &m.username {
            o.set_credentials(user, "");
        }
        if m.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(&self.config)?),
            )));
        }
        Ok(o)
    }

    async fn session(&mut self) -> Ended {
        let lost = |was_connected, why: String| Ended::Lost { was_connected, why };
        let options = match self.options() {
            Ok(o) => o,
            Err(e) => return lost(false, e),
        };
        let window = self.config.mqtt.window;
        let (client, mut events) = AsyncClient::new(options, window + 64);

        // Connect (when stopping, only until the deadline, to deliver what is pending).
        let connack = {
            let connect = timeout(Duration::from_secs(30), wait_connack(&mut events));
            tokio::pin!(connect);
            loop {
                if self.done_stopping() {
                    return Ended::Shutdown;
                }
                let until = self
                    .stop_at
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    r = &mut connect => break r,
                    _ = self.shutdown.changed(), if self.stop_at.is_none() => {
                        self.stop_at = Some(Instant::now() + self.flush);
                    }
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        };
        match connack {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return lost(false, e),
            Err(_) => return lost(false, "no answer from the broker within 30 s".into()),
        }
        log::info!(
            "mqtt: connected to {}:{}",
            self.config.mqtt.host.as_deref().unwrap_or(""),
            self.config.mqtt.port
        );
        let _ = self.link.send(Link::Connected);

        let mut sent = PubackWindow::default();
        let (reply_tx, mut replies) = mpsc::channel::<(String, String)>(16);

        let mut setup = vec![(self.topics.status.clone(), "online".to_string(), true)];
        if self.config.mqtt.home_assistant {
            setup.extend(discovery(&self.config, &self.topics));
        }
        for (topic, body, retain) in setup {
            if client
                .try_publish(topic, QoS::AtLeastOnce, retain, body)
                .is_ok()
            {
                sent.requested(None);
            }
        }
        if let Err(e) = client.try_subscribe(&self.topics.commands, QoS::AtLeastOnce) {
            return lost(true, format!("cannot subscribe to commands ({e})"));
        }

        loop {
            // Keep the window full, oldest first.
            let room = sent.room(window);
            if room > 0 {
                match self.store.pending(sent.last_sent(), room) {
                    Ok(rows) => {
                        for row in rows {
                            if client
                                .try_publish(
                                    &self.topics.result,
                                    QoS::AtLeastOnce,
                                    false,
                                    row.message,
                                )
                                .is_err()
                            {
                                break;
                            }
                            sent.requested(Some(row.seq));
                        }
                    }
                    Err(e) => log::error!("outbox: {e}"),
                }
            }
            if let Some(until) = self.stop_at {
                let idle = sent.outstanding() == 0;
                if idle || Instant::now() >= until {
                    if !idle {
                        log::warn!(
                            "mqtt: stopping with {} results unacknowledged; they are sent after the next start",
                            sent.outstanding()
                        );
                    }
                    self.say_offline(&client, &mut events).await;
                    return Ended::Shutdown;
                }
            }

            let mut acked = Vec::new();
            tokio::select! {
                event = events.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        sent.on_outgoing(pkid);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = sent.on_puback(ack.pkid) {
                            acked.push(seq);
                        }
                    }
                    // A retained command would fire again at every reconnect: ignore it.
                    Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                        log::warn!("mqtt: {}: retained command ignored; publish commands without retain", p.topic);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        self.command(&p.topic, p.payload.to_vec(), &reply_tx);
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) => {
                        return lost(true, "the broker closed the connection".into());
                    }
                    Ok(_) => {}
                    Err(e) => return lost(true, e.to_string()),
                },
                _ = self.outbox.notified() => {}
                Some((topic, body)) = replies.recv() => {
                    if client.try_publish(topic, QoS::AtLeastOnce, false, body).is_ok() {
                        sent.requested(None);
                    }
                }
                _ = self.shutdown.changed(), if self.stop_at.is_none() => {
                    self.stop_at = Some(Instant::now() + self.flush);
                }
                _ = sleep(Duration::from_millis(200)), if self.stop_at.is_some() => {}
            }
            if let Err(e) = self.store.mark_delivered(&acked) {
                // Not fatal: unmarked rows are sent again (at least once).
                log::error!("outbox: {e}");
            }
        }
    }

    fn command(&self, topic: &str, payload: Vec<u8>, replies: &mpsc::Sender<(String, String)>) {
        let Some(name) = self.topics.command_name(topic).map(str::to_string) else {
            return;
        };
        if name == "reply" || topic.ends_with("/reply") {
            return;
        }
        let commands = self.commands.clone();
        let reply_topic = self.topics.reply(&name);
        let replies = replies.clone();
        tokio::spawn(async move {
            let answer = commands.handle(&name, &payload).await;
            let _ = replies.send((reply_topic, answer.to_string())).await;
        });
    }

    async fn say_offline(&mut self, client: &AsyncClient, events: &mut EventLoop) {
        let _ = self.link.send(Link::Connecting);
        if client
            .try_publish(&self.topics.status, QoS::AtLeastOnce, true, "offline")
            .is_ok()
        {
            let _ = client.try_disconnect();
            // Let the offline message and the disconnect go out; give up after 2 s.
            let _ = timeout(Duration::from_secs(2), async {
                loop {
                    match events.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        _ => {}
                    }
                }
            })
            .await;
        }
        log::info!("mqtt: offline");
    }
}

async fn wait_connack(events: &mut EventLoop) -> Result<(), String> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!(
                        "the broker refused the connection ({:?}); check mqtt.username, the password file and the client certificate",
                        ack.code
                    ))
                };
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                return Err(format!(
                    "the broker refused the connection ({code:?}); check mqtt.username, the password file and the client certificate"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_command_names() {
        let mut c = Config {
            device_id: "clinic-3".into(),
            ..Default::default()
        };
        c.mqtt.prefix = "derm".into();
        let t = Topics::new(&c);
        assert_eq!(t.status, "derm/clinic-3/status");
        assert_eq!(t.commands, "derm/clinic-3/cmd/+");
        assert_eq!(t.command_name("derm/clinic-3/cmd/capture"), Some("capture"));
        assert_eq!(t.command_name("derm/clinic-3/cmd/capture/reply"), None);
        assert_eq!(t.command_name("derm/clinic-4/cmd/capture"), None);
        assert_eq!(t.reply("capture"), "derm/clinic-3/cmd/capture/reply");
    }
}
