//! MQTT delivery: drains the outbox in order, marks a message delivered only on its PUBACK,
//! keeps `<prefix>/<device>/status` (retained, with a last will), answers commands on
//! `<topic>/reply`, and publishes Home Assistant discovery topics.
//!
//! rumqttc keeps nothing on disk and re-sends its own in-flight messages after a reconnect; we
//! rely on neither. Every connection gets a fresh client with a clean session, and the outbox
//! in SQLite says what is still to send: after a reconnect or a restart, everything not yet
//! acknowledged goes out again from the oldest (at least once; consumers deduplicate by `id`).
//! A PUBACK is matched to its outbox row through the order of publishes on the connection
//! (`window.rs`, plain data so that matching is tested without a broker).
//!
//! Here: the topics, the reconnect loop and one session, split in its steps (connect, announce,
//! fill the window, handle one event). `tls.rs` builds the credentials and TLS settings,
//! `discovery.rs` the Home Assistant config topics.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, timeout, Instant};

use crate::backoff::Reconnect;
use crate::config::Config;
use crate::control::{Commands, Link};
use crate::store::Store;

mod discovery;
mod tls;
mod window;

use discovery::discovery;
pub use tls::{warn_if_insecure, Credentials};
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

/// The channels the daemon wires the publisher to.
pub struct Wiring {
    /// Woken when the worker records a result.
    pub outbox: Arc<Notify>,
    pub commands: Commands,
    pub link: watch::Sender<Link>,
    /// true: finish (deliver what is pending, for `flush` at most), say offline, disconnect.
    pub shutdown: watch::Receiver<bool>,
}

pub struct Publisher {
    config: Arc<Config>,
    credentials: Credentials,
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

impl Ended {
    fn lost(was_connected: bool, why: impl Into<String>) -> Ended {
        Ended::Lost {
            was_connected,
            why: why.into(),
        }
    }
}

/// The connection ends with the session: its event loop task goes with it.
impl Drop for Connection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Run the event loop in a task of its own and hand its events over a channel. rumqttc's
/// `EventLoop::poll` is not cancel-safe: read in rumqttc 0.25, `EventLoop::select` takes a
/// request off the queue, records it as sent (`handle_outgoing_packet`: the publish gets its
/// packet id and its `Outgoing::Publish` event) and only then awaits the socket write. Polled
/// inside the session's `select!`, a result or a wake-up that won the race would drop that
/// future with the publish neither written nor requeued: lost until the next reconnect. A
/// channel's `recv` is cancel-safe, so nothing is lost to the other branches any more.
fn pump(
    mut events: EventLoop,
) -> (
    mpsc::Receiver<Result<Event, ConnectionError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            // The first error ends the connection: the session reconnects with a fresh client.
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

/// One connection: a fresh client and event loop (clean session), the PUBACK window that goes
/// with them, and the channel on which spawned commands hand back their answers.
struct Connection {
    client: AsyncClient,
    /// The event loop's events, from its own task (see [`pump`]).
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    pump: tokio::task::JoinHandle<()>,
    sent: PubackWindow,
    reply_tx: mpsc::Sender<(String, String)>,
    replies: mpsc::Receiver<(String, String)>,
}

impl Connection {
    fn new(client: AsyncClient, events: EventLoop) -> Connection {
        let (reply_tx, replies) = mpsc::channel(16);
        let (events, pump) = pump(events);
        Connection {
            client,
            events,
            pump,
            sent: PubackWindow::default(),
            reply_tx,
            replies,
        }
    }

    /// Hand a QoS 1 publish to rumqttc; `seq` for an outbox row. False when its request queue
    /// is full: an outbox row stays pending and a later fill takes it again; a status,
    /// discovery or reply publish is dropped (the queue has room for them: window + 64).
    fn publish(
        &mut self,
        topic: impl Into<String>,
        body: impl Into<Vec<u8>>,
        retain: bool,
        seq: Option<i64>,
    ) -> bool {
        let handed = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, body)
            .is_ok();
        if handed {
            self.sent.requested(seq);
        }
        handed
    }
}

impl Publisher {
    pub fn new(
        config: Arc<Config>,
        credentials: Credentials,
        store: Store,
        wiring: Wiring,
        flush: Duration,
    ) -> Publisher {
        Publisher {
            topics: Topics::new(&config),
            config,
            credentials,
            store,
            outbox: wiring.outbox,
            commands: wiring.commands,
            link: wiring.link,
            shutdown: wiring.shutdown,
            flush,
            stop_at: None,
        }
    }

    /// Connect, deliver, reconnect with backoff; returns after a shutdown.
    pub async fn run(mut self) {
        let host = self.config.mqtt.host.clone().unwrap_or_default();
        let port = self.config.mqtt.port;
        let mut reconnect = Reconnect::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            if self.stop_at.is_none() && *self.shutdown.borrow() {
                self.start_stopping();
            }
            if self.done_stopping() {
                return;
            }
            let _ = self.link.send(Link::Connecting);
            let Ended::Lost { was_connected, why } = self.session().await else {
                return;
            };
            // A session that had connected was a success: the backoff starts from 1 s again.
            if was_connected {
                reconnect.on_success();
            }
            reconnect.on_failure(std::time::Instant::now());
            let retry_in = reconnect.retry_in();
            log::warn!(
                "mqtt {host}:{port}: {why}; retrying in {} s (results are kept in the outbox)",
                retry_in.as_secs()
            );
            let _ = self.link.send(Link::Connecting);
            tokio::select! {
                _ = sleep(retry_in) => {}
                _ = self.shutdown.changed(), if self.stop_at.is_none() => self.start_stopping(),
            }
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

    fn options(&self) -> MqttOptions {
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
        self.credentials.apply(&mut o);
        o
    }

    /// One connection, from a fresh client to its loss or the shutdown.
    async fn session(&mut self) -> Ended {
        let options = self.options();
        let (client, mut events) = AsyncClient::new(options, self.config.mqtt.window + 64);
        if let Err(ended) = self.connect(&mut events).await {
            return ended;
        }
        log::info!(
            "mqtt: connected to {}:{}",
            self.config.mqtt.host.as_deref().unwrap_or(""),
            self.config.mqtt.port
        );
        let _ = self.link.send(Link::Connected);

        let mut conn = Connection::new(client, events);
        if let Err(why) = self.announce(&mut conn) {
            return Ended::lost(true, why);
        }
        loop {
            self.fill_window(&mut conn);
            if self.finish_if_stopping(&mut conn).await {
                return Ended::Shutdown;
            }
            if let ControlFlow::Break(ended) = self.next_event(&mut conn).await {
                return ended;
            }
        }
    }

    /// Wait for the CONNACK, 30 s at most. When stopping, only until the deadline: connecting
    /// then is only worth it to deliver what is pending.
    async fn connect(&mut self, events: &mut EventLoop) -> Result<(), Ended> {
        let connect = timeout(Duration::from_secs(30), wait_connack(events));
        tokio::pin!(connect);
        let connack = loop {
            if self.done_stopping() {
                return Err(Ended::Shutdown);
            }
            let until = self
                .stop_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = &mut connect => break r,
                _ = self.shutdown.changed(), if self.stop_at.is_none() => self.start_stopping(),
                _ = tokio::time::sleep_until(until) => {}
            }
        };
        match connack {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(Ended::lost(false, why)),
            Err(_) => Err(Ended::lost(false, "no answer from the broker within 30 s")),
        }
    }

    /// What every fresh session starts with: status `online` (retained, replacing the last
    /// will's `offline`), the discovery topics, the command subscription.
    fn announce(&self, conn: &mut Connection) -> Result<(), String> {
        let mut setup = vec![(self.topics.status.clone(), "online".to_string(), true)];
        if self.config.mqtt.home_assistant {
            setup.extend(discovery(&self.config, &self.topics));
        }
        for (topic, body, retain) in setup {
            conn.publish(topic, body, retain, None);
        }
        conn.client
            .try_subscribe(&self.topics.commands, QoS::AtLeastOnce)
            .map_err(|e| format!("cannot subscribe to commands ({e})"))
    }

    /// Keep the window full, oldest first.
    fn fill_window(&self, conn: &mut Connection) {
        let room = conn.sent.room(self.config.mqtt.window);
        if room == 0 {
            return;
        }
        match self.store.pending(conn.sent.last_sent(), room) {
            Ok(rows) => {
                for row in rows {
                    if !conn.publish(&self.topics.result, row.message, false, Some(row.seq)) {
                        break;
                    }
                }
            }
            Err(e) => log::error!("outbox: {e}"),
        }
    }

    /// When stopping and everything sent is acknowledged, or the deadline has passed: say
    /// offline and disconnect. True when the session is over.
    async fn finish_if_stopping(&mut self, conn: &mut Connection) -> bool {
        let Some(until) = self.stop_at else {
            return false;
        };
        let unacknowledged = conn.sent.outstanding();
        if unacknowledged > 0 && Instant::now() < until {
            return false;
        }
        if unacknowledged > 0 {
            log::warn!(
                "mqtt: stopping with {unacknowledged} results unacknowledged; they are sent after the next start"
            );
        }
        self.say_offline(conn).await;
        true
    }

    /// Wait for the next thing to do: a network event, a new result in the outbox, a command's
    /// answer, the shutdown (and, while stopping, a tick to check the deadline).
    async fn next_event(&mut self, conn: &mut Connection) -> ControlFlow<Ended> {
        tokio::select! {
            event = conn.events.recv() => return match event {
                Some(event) => self.on_event(conn, event),
                None => ControlFlow::Break(Ended::lost(true, "the MQTT event loop stopped")),
            },
            _ = self.outbox.notified() => {}
            Some((topic, body)) = conn.replies.recv() => {
                conn.publish(topic, body, false, None);
            }
            _ = self.shutdown.changed(), if self.stop_at.is_none() => self.start_stopping(),
            _ = sleep(Duration::from_millis(200)), if self.stop_at.is_some() => {}
        }
        ControlFlow::Continue(())
    }

    fn on_event(
        &mut self,
        conn: &mut Connection,
        event: Result<Event, ConnectionError>,
    ) -> ControlFlow<Ended> {
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => conn.sent.on_outgoing(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(seq) = conn.sent.on_puback(ack.pkid) {
                    self.mark_delivered(seq);
                }
            }
            // A retained command would fire again at every reconnect: ignore it.
            Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                log::warn!(
                    "mqtt: {}: retained command ignored; publish commands without retain",
                    p.topic
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                self.command(&p.topic, p.payload.to_vec(), &conn.reply_tx);
            }
            Ok(Event::Incoming(Packet::Disconnect)) => {
                return ControlFlow::Break(Ended::lost(true, "the broker closed the connection"));
            }
            Ok(_) => {}
            Err(e) => return ControlFlow::Break(Ended::lost(true, e.to_string())),
        }
        ControlFlow::Continue(())
    }

    fn mark_delivered(&mut self, seq: i64) {
        if let Err(e) = self.store.mark_delivered(&[seq]) {
            // Not fatal: unmarked rows are sent again (at least once).
            log::error!("outbox: {e}");
        }
    }

    /// Deliver what is pending for `flush` at most, then stop.
    fn start_stopping(&mut self) {
        self.stop_at = Some(Instant::now() + self.flush);
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

    async fn say_offline(&mut self, conn: &mut Connection) {
        let _ = self.link.send(Link::Connecting);
        if conn
            .client
            .try_publish(&self.topics.status, QoS::AtLeastOnce, true, "offline")
            .is_ok()
        {
            let _ = conn.client.try_disconnect();
            // Let the offline message and the disconnect go out; give up after 2 s.
            let _ = timeout(Duration::from_secs(2), async {
                loop {
                    match conn.events.recv().await {
                        Some(Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) | None => break,
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
