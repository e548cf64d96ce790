//! The daemon end to end with real components: Debian's mosquitto on a free loopback port,
//! started, stopped and restarted by the tests; a real SQLite file; the bundled ISIC samples as
//! the watched folder; the release binary, killed with SIGKILL in a loop.

mod common;

use std::collections::HashSet;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dermaedge::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dermaedge");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A time limit, stretched under emulation (scripts/cross.sh sets DERMAEDGE_TEST_SLOWDOWN):
/// limits only catch hangs, they are not performance checks.
fn secs(n: u64) -> Duration {
    let factor: u64 = std::env::var("DERMAEDGE_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(n * factor.max(1))
}

/// The bundled JPEG samples these tests feed the daemon, by name. Under emulation only the first
/// `DERMAEDGE_TEST_SAMPLES` (scripts/cross.sh sets it): one analysis costs ~18 s under
/// qemu-aarch64 against ~0.5 s natively, and what these tests check (delivery, order,
/// durability, refusals) needs several results in flight, not eight different lesions.
fn sample_images() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = fs::read_dir(common::samples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    all.sort();
    let limit = std::env::var("DERMAEDGE_TEST_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    all.truncate(limit.max(1));
    all
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A mosquitto broker on 127.0.0.1:`port`, persistent sessions kept in `dir`.
struct Broker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn mosquitto_bin() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "mosquitto is not installed: scripts/test.sh installs it (apt-get install mosquitto)",
        )
}

impl Broker {
    fn new(dir: &Path) -> Broker {
        let port = free_port();
        let dir = dir.join(format!("broker-{port}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest file {}/log\n",
                dir.display(),
                dir.display()
            ),
        )
        .unwrap();
        Broker {
            port,
            dir,
            child: None,
        }
    }

    fn start(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_until("mosquitto to listen", secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM: mosquitto saves its persistent sessions and exits.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM");
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} failed");
}

/// A subscriber with a persistent session (it gets what was published while it was away, as
/// a dashboard would), collecting every message of `<prefix>/#`.
/// (topic, payload) in arrival order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct Subscriber {
    got: Received,
    client: AsyncClient,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16, filters: &[&str]) -> Subscriber {
        Subscriber::start_as(port, filters, None)
    }

    /// Logged in as `login` (user, password) on a broker that wants one.
    fn start_as(port: u16, filters: &[&str], login: Option<(&str, &str)>) -> Subscriber {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let user = login.map_or("", |(u, _)| u);
        let mut o = MqttOptions::new(format!("test-sub-{port}{user}"), "127.0.0.1", port);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut events) = AsyncClient::new(o, 64);
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let (g, s, c) = (got.clone(), stop.clone(), client.clone());
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while !s.load(Ordering::SeqCst) {
                    match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            for f in &filters {
                                let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            g.lock()
                                .unwrap()
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                        _ => {}
                    }
                }
            });
        });
        Subscriber {
            got,
            client,
            stop,
            thread: Some(thread),
        }
    }

    fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Result message ids in arrival order (with repeats).
    fn result_ids(&self, prefix: &str) -> Vec<String> {
        self.on(&format!("{prefix}/result"))
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(p).unwrap();
                v["id"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test's files: the watched folder, the state directory, the config.
struct Site {
    dir: tempfile::TempDir,
    /// Processes started for this test, killed if the test fails (no daemon left behind).
    started: std::cell::RefCell<Vec<u32>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if thread::panicking() {
            for pid in self.started.borrow().iter() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

impl Site {
    fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
            started: Default::default(),
        };
        fs::create_dir_all(site.inbox()).unwrap();
        site
    }
    fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn db(&self) -> PathBuf {
        self.state().join("dermaedge.db")
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Copy the sample images into the inbox `copies` times, under new names.
    fn add_samples(&self, copies: usize, tag: &str) -> usize {
        let samples = sample_images();
        let mut n = 0;
        for c in 0..copies {
            for p in &samples {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                fs::copy(p, self.inbox().join(format!("{stem}-{tag}{c}.jpg"))).unwrap();
                n += 1;
            }
        }
        n
    }

    fn config(&self, port: Option<u16>, extra: &str) -> PathBuf {
        let mqtt = match port {
            Some(p) => format!(
                "[mqtt]\nhost = \"127.0.0.1\"\nport = {p}\nprefix = \"t\"\nkeep_alive_s = 5\nallow_insecure = true\n{extra}\n"
            ),
            None => String::new(),
        };
        let text = format!(
            "device_id = \"dev1\"\nstate_dir = \"{}\"\nmodels = \"{}\"\nsocket = \"{}\"\nsource = \"folder\"\n[folder]\npath = \"{}\"\npoll_ms = 100\n{mqtt}",
            self.state().display(),
            common::models().display(),
            self.socket().display(),
            self.inbox().display(),
        );
        let path = self.dir.path().join("dermaedge.toml");
        fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&self, config: &Path, once: bool) -> Child {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--config").arg(config);
        if once {
            cmd.arg("--once");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dermaedge");
        self.started.borrow_mut().push(child.id());
        child
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// (captures, results, undelivered).
    fn counts(&self) -> (i64, i64, i64) {
        if !self.db().exists() {
            return (0, 0, 0);
        }
        Store::open_read_only(&self.db())
            .and_then(|s| s.counts())
            .unwrap_or((0, 0, 0))
    }

    /// Stored result ids in capture order.
    fn stored_ids(&self) -> Vec<String> {
        Store::open_read_only(&self.db())
            .unwrap()
            .messages_since(None)
            .unwrap()
            .iter()
            .map(|m| {
                let v: Value = serde_json::from_str(m).unwrap();
                v["id"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

fn message_validator() -> jsonschema::Validator {
    let read = |name: &str| -> Value {
        serde_json::from_str(&fs::read_to_string(common::repo().join("docs").join(name)).unwrap())
            .unwrap()
    };
    let registry = jsonschema::Registry::new()
        .add(
            "https://dermaedge.example/docs/result.schema.json",
            read("result.schema.json"),
        )
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_registry(&registry)
        .build(&read("message.schema.json"))
        .unwrap()
}

/// Every id arrived, first arrivals in the stored order.
fn assert_delivered_in_order(stored: &[String], received: &[String]) {
    let mut seen = HashSet::new();
    let first: Vec<&String> = received.iter().filter(|id| seen.insert(*id)).collect();
    let missing: Vec<&String> = stored.iter().filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    let stored_set: HashSet<&String> = stored.iter().collect();
    let first_stored: Vec<&String> = first
        .into_iter()
        .filter(|i| stored_set.contains(i))
        .collect();
    assert_eq!(
        first_stored,
        stored.iter().collect::<Vec<_>>(),
        "delivery order"
    );
}

/// Run a `dermaedge` command that must succeed and print one JSON value.
fn cli_json(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() >= limit {
            // Leave no daemon behind when the test fails.
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            start.elapsed() < limit,
            "the daemon did not exit within {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn folder_to_sqlite_to_subscriber_with_valid_messages_and_commands() {
    let site = Site::new();
    let mut broker = Broker::new(site.dir.path());
    broker.start();
    let sub = Subscriber::start(broker.port, &["t/#", "homeassistant/#"]);
    thread::sleep(Duration::from_millis(300));
    let n = site.add_samples(1, "a") as i64;
    let config = site.config(Some(broker.port), "home_assistant = true");
    let mut daemon = site.spawn(&config, false);

    wait_until("every sample delivered", secs(60), || {
        let (_, results, pending) = site.counts();
        results == n && pending == 0 && sub.result_ids("t/dev1").len() as i64 >= n
    });
    assert_eq!(
        sub.on("t/dev1/status").last().map(Vec::as_slice),
        Some(&b"online"[..])
    );
    assert_eq!(
        sub.on("homeassistant/sensor/dermaedge_dev1/top_class/config")
            .len(),
        1
    );
    let validator = message_validator();
    for payload in sub.on("t/dev1/result") {
        let v: Value = serde_json::from_slice(&payload).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            v["image"].get("data_base64").is_none(),
            "images stay on the device by default"
        );
        assert_eq!(v["image"]["stored"], true);
        // File names (often patient names) stay on the device: the message says the id.
        assert_eq!(v["result"]["image"], v["id"], "{}", v["result"]["image"]);
    }
    assert_eq!(
        site.log().matches("plain TCP").count(),
        1,
        "a broker without TLS is accepted only on purpose, and said once"
    );
    assert_delivered_in_order(&site.stored_ids(), &sub.result_ids("t/dev1"));

    // Commands over MQTT: bad JSON, names, oversized bodies and a capture without a camera all
    // get a clear reply; none is stored.
    let ask = |name: &str, body: Vec<u8>| {
        let before = sub.on(&format!("t/dev1/cmd/{name}/reply")).len();
        sub.client
            .try_publish(format!("t/dev1/cmd/{name}"), QoS::AtLeastOnce, false, body)
            .unwrap();
        wait_until("a command reply", secs(20), || {
            sub.on(&format!("t/dev1/cmd/{name}/reply")).len() > before
        });
        let reply = sub.on(&format!("t/dev1/cmd/{name}/reply")).pop().unwrap();
        serde_json::from_slice::<Value>(&reply).unwrap()
    };
    let r = ask("capture", b"{not json".to_vec());
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("invalid capture request"),
        "{r}"
    );
    let r = ask("capture", br#"{"name": "Jane Doe"}"#.to_vec());
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `name`"),
        "{r}"
    );
    let r = ask("capture", vec![b' '; 10_000]);
    assert!(r["error"].as_str().unwrap().contains("at most 4096"), "{r}");
    let r = ask(
        "capture",
        br#"{"request_id": "r1", "lesion_id": "L1"}"#.to_vec(),
    );
    assert_eq!(r["request_id"], "r1");
    assert!(r["error"].as_str().unwrap().contains("no camera"), "{r}");
    let r = ask("reboot", b"{}".to_vec());
    assert!(
        r["error"].as_str().unwrap().contains("unknown command"),
        "{r}"
    );
    let r = ask("status", Vec::new());
    assert_eq!(r["results"], n, "{r}");

    // A file through the local socket (0600), with context; it is published with the context.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(site.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let reply = cli_json(
        Command::new(BIN)
            .args([
                "capture",
                "--lesion-id",
                "L9",
                "--age",
                "61",
                "--sex",
                "male",
                "--file",
            ])
            .arg(common::samples().join("ISIC_0000900.jpg"))
            .arg("--socket")
            .arg(site.socket()),
    );
    let id = reply["id"].as_str().unwrap().to_string();
    wait_until("the socket capture delivered", secs(20), || {
        sub.result_ids("t/dev1").contains(&id)
    });
    let msg = sub
        .on("t/dev1/result")
        .into_iter()
        .map(|p| serde_json::from_slice::<Value>(&p).unwrap())
        .find(|v| v["id"] == id.as_str())
        .unwrap();
    assert_eq!(msg["context"]["lesion_id"], "L9");
    assert_eq!(msg["trigger"], "socket");
    assert!(validator.is_valid(&msg));

    // `dermaedge status` over the socket: counts and the link.
    let status = cli_json(
        Command::new(BIN)
            .arg("status")
            .arg("--socket")
            .arg(site.socket()),
    );
    assert_eq!(
        (status["results"].as_i64(), status["mqtt"].as_str()),
        (Some(n + 1), Some("connected")),
        "{status}"
    );

    // SIGTERM: exit 0, `offline` retained, everything delivered.
    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, secs(30));
    assert!(status.success(), "exit {status:?}\n{}", site.log());
    wait_until("offline", secs(10), || {
        sub.on("t/dev1/status").last().map(Vec::as_slice) == Some(&b"offline"[..])
    });
    assert_eq!(site.counts(), (n + 1, n + 1, 0));
    assert!(!site.socket().exists(), "the socket is removed at exit");

    // The export carries the same messages; CSV has a header and a row per result.
    let out = Command::new(BIN)
        .args(["results", "--csv", "--db"])
        .arg(site.db())
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count() as i64, n + 2);
    assert!(csv.starts_with(
        "id,captured_at,device_id,source,trigger,status,recapture_reasons,top_class,MEL,"
    ));
}

#[test]
fn broker_down_for_the_whole_run_then_started_gets_everything_in_order() {
    let site = Site::new();
    let mut broker = Broker::new(site.dir.path());
    // The dashboard's persistent session exists before the outage.
    broker.start();
    let sub = Subscriber::start(broker.port, &["t/#"]);
    thread::sleep(Duration::from_millis(500));
    broker.stop();

    let n = site.add_samples(1, "b") as i64;
    let config = site.config(Some(broker.port), "");
    let mut daemon = site.spawn(&config, false);
    wait_until("every sample stored", secs(60), || site.counts().1 == n);
    assert_eq!(
        site.counts().2,
        n,
        "nothing can be delivered without a broker"
    );
    broker.start();
    wait_until("the backlog delivered", secs(60), || {
        site.counts().2 == 0 && sub.result_ids("t/dev1").len() as i64 >= n
    });
    assert_delivered_in_order(&site.stored_ids(), &sub.result_ids("t/dev1"));
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
}

#[test]
fn broker_restarted_mid_stream_loses_nothing() {
    let site = Site::new();
    let mut broker = Broker::new(site.dir.path());
    broker.start();
    let sub = Subscriber::start(broker.port, &["t/#"]);
    thread::sleep(Duration::from_millis(300));
    let n = site.add_samples(3, "c") as i64;
    let config = site.config(Some(broker.port), "");
    let mut daemon = site.spawn(&config, false);
    wait_until("the first results delivered", secs(60), || {
        !sub.result_ids("t/dev1").is_empty()
    });
    broker.stop();
    thread::sleep(Duration::from_millis(700));
    broker.start();
    wait_until("every result delivered", secs(90), || {
        let (_, results, pending) = site.counts();
        results == n && pending == 0
    });
    wait_until("every result received", secs(30), || {
        sub.result_ids("t/dev1")
            .iter()
            .collect::<HashSet<_>>()
            .len() as i64
            >= n
    });
    assert_delivered_in_order(&site.stored_ids(), &sub.result_ids("t/dev1"));
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
}

/// SIGKILL at pseudo-random moments, over and over: after each kill the database opens clean,
/// no stored result is lost, and in the end every file has exactly one result, delivered.
#[test]
fn sigkill_soak_loses_nothing() {
    let kills: usize = std::env::var("DERMAEDGE_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let site = Site::new();
    let mut broker = Broker::new(site.dir.path());
    broker.start();
    let sub = Subscriber::start(broker.port, &["t/#"]);
    thread::sleep(Duration::from_millis(300));
    let config = site.config(Some(broker.port), "");
    let mut files = 0;
    let mut results_before = 0;
    let mut seed: u64 = 0x5eed;
    let samples = sample_images();
    let every = samples.len().min(4);
    for i in 0..kills {
        if i % 4 == 0 {
            // New files now and then keep the worker busy at kill time.
            for (k, p) in samples.iter().enumerate() {
                if k % every == (i / 4) % every {
                    fs::copy(p, site.inbox().join(format!("k{i}-{k}.jpg"))).unwrap();
                    files += 1;
                }
            }
        }
        let mut daemon = site.spawn(&config, false);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_millis(150 + (seed >> 33) % 700));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        let store = Store::open_read_only(&site.db());
        if let Ok(store) = store {
            assert_eq!(store.integrity_check().unwrap(), "ok", "after kill {i}");
            let (_, results, _) = store.counts().unwrap();
            assert!(results >= results_before, "results lost after kill {i}");
            results_before = results;
        }
    }
    // Let it finish: every file analyzed once, everything delivered.
    let mut daemon = site.spawn(&config, true);
    let status = wait_exit(&mut daemon, secs(120));
    assert!(status.success(), "{}", site.log());
    let (captures, results, pending) = site.counts();
    assert_eq!(
        (captures, results, pending),
        (files, files, 0),
        "{}",
        site.log()
    );
    wait_until("every result received", secs(30), || {
        sub.result_ids("t/dev1")
            .iter()
            .collect::<HashSet<_>>()
            .len() as i64
            >= files
    });
    let received: HashSet<String> = sub.result_ids("t/dev1").into_iter().collect();
    for id in site.stored_ids() {
        assert!(received.contains(&id), "{id} never arrived");
    }
}

#[test]
fn demo_config_runs_once_without_broker_or_camera() {
    let site = Site::new();
    site.add_samples(1, "d");
    let config = site.config(None, "");
    let mut daemon = site.spawn(&config, true);
    let status = wait_exit(&mut daemon, secs(120));
    assert!(status.success(), "{}", site.log());
    let n = fs::read_dir(site.inbox()).unwrap().count() as i64;
    // Stored, kept for a broker that may come later.
    assert_eq!(site.counts(), (n, n, n));
    let log = site.log();
    assert!(log.contains("ready in"), "{log}");
    // Images are private: 0700 folder, 0600 files.
    let images = site.state().join("images");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode(&images), 0o700);
    for f in fs::read_dir(&images).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    // A second run finds nothing new to do.
    let mut again = site.spawn(&config, true);
    assert!(wait_exit(&mut again, secs(60)).success());
    assert_eq!(site.counts().1, n);
}

#[test]
fn bad_inputs_in_the_folder_are_recorded_and_the_rest_go_on() {
    let site = Site::new();
    site.add_samples(1, "e");
    fs::write(
        site.inbox().join("broken.jpg"),
        b"\xff\xd8\xff\xe0 not really",
    )
    .unwrap();
    fs::write(site.inbox().join("empty.png"), b"").unwrap();
    let n_good = sample_images().len() as i64;
    let config = site.config(None, "");
    let mut daemon = site.spawn(&config, true);
    assert!(wait_exit(&mut daemon, secs(120)).success());
    assert_eq!(site.counts(), (n_good + 2, n_good, n_good));
    let log = site.log();
    assert!(
        log.contains("broken.jpg") && log.contains("empty.png"),
        "{log}"
    );
}

#[test]
fn bad_configs_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expect) in [
        ("[mqtt]\nhots = \"x\"\n", "hots"),
        ("queue = 0\n", "queue"),
        ("[camera]\nwidth = 0\n", "camera.width"),
        ("source = \"ftp\"\n", "source"),
    ] {
        let p = dir.path().join("c.toml");
        fs::write(&p, text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expect) && err.contains("c.toml"),
            "{text}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/dermaedge.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dermaedge.toml"));
}

#[test]
fn runs_with_no_broker_and_no_socket_until_sigterm() {
    let site = Site::new();
    let config = site.config(None, "");
    let text = fs::read_to_string(&config).unwrap().replace(
        &format!("socket = \"{}\"", site.socket().display()),
        "socket = \"\"",
    );
    fs::write(&config, text).unwrap();
    let mut daemon = site.spawn(&config, false);
    wait_until("ready", secs(30), || site.log().contains("ready in"));
    // Files arriving after the start are picked up too.
    let n = site.add_samples(1, "f") as i64;
    wait_until("every sample stored", secs(60), || site.counts().1 == n);
    assert!(daemon.try_wait().unwrap().is_none(), "still running");
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
    assert_eq!(site.counts(), (n, n, n));
}

/// The state directory on a tiny tmpfs that fills up mid-run: the daemon keeps going, logs the
/// cause, loses nothing it stored, and catches up once there is room. Mounting needs root (CI
/// runs as root); elsewhere the test says it did not run.
#[test]
fn full_disk_loses_nothing_and_catches_up() {
    let site = Site::new();
    let mount = site.state();
    fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("full_disk_loses_nothing_and_catches_up: NOT RUN (mounting a tmpfs needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());
    let n = site.add_samples(3, "g") as i64;
    let config = site.config(None, "");
    let mut daemon = site.spawn(&config, true);
    let status = wait_exit(&mut daemon, secs(120));
    assert!(status.success(), "{}", site.log());
    let log = site.log();
    assert!(
        log.contains("No space left on device") || log.contains("disk full"),
        "{log}"
    );
    let store = Store::open_read_only(&site.db()).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let (_, first_results, _) = store.counts().unwrap();
    drop(store);
    assert!(
        first_results < n,
        "the disk was meant to fill up ({first_results} of {n} stored)"
    );
    let first_ids = site.stored_ids();

    // Room again: the files that could not be recorded are analyzed; nothing stored is lost.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    thread::sleep(Duration::from_millis(100));
    let mut daemon = site.spawn(&config, true);
    assert!(
        wait_exit(&mut daemon, secs(120)).success(),
        "{}",
        site.log()
    );
    let ids = site.stored_ids();
    assert_eq!(ids.len() as i64, n, "{}", site.log());
    assert_eq!(&ids[..first_ids.len()], &first_ids[..]);
}

/// A mosquitto on its own config (TLS, passwords, ACL), listening on `port`; the site stops
/// it even when the test fails.
fn spawn_broker(site: &Site, conf: &Path, port: u16) -> Child {
    let broker = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    site.started.borrow_mut().push(broker.id());
    wait_until("the broker to listen", secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    broker
}

/// TLS (rustls + ring) with the broker's CA, a client certificate and a username/password read
/// from a file: every result is acknowledged by a broker that requires all three. A wrong
/// password is refused by the broker and nothing is marked delivered.
#[test]
fn tls_with_client_certificate_and_password() {
    let site = Site::new();
    let d = site.dir.path().join("pki");
    fs::create_dir_all(&d).unwrap();
    let script = r#"set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
openssl req $ec -keyout client.key -out client.csr -subj /CN=dermaedge 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
touch passwd && mosquitto_passwd -b passwd clinic s3cret
printf 's3cret\n' > good-password
printf 'guess\n' > bad-password
chmod 644 *.key passwd
"#;
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&d)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "making the test PKI (openssl, mosquitto_passwd) failed"
    );
    let port = free_port();
    let conf = d.join("mosquitto.conf");
    fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\nrequire_certificate true\nallow_anonymous false\npassword_file {p}/passwd\n",
            p = d.display()
        ),
    )
    .unwrap();
    let mut broker = spawn_broker(&site, &conf, port);
    let tls = |password: &str| {
        format!(
            "tls = true\nusername = \"clinic\"\npassword_file = \"{p}/{password}\"\nca_file = \"{p}/ca.pem\"\nclient_cert_file = \"{p}/client.pem\"\nclient_key_file = \"{p}/client.key\"\n",
            p = d.display()
        )
    };
    let n = site.add_samples(1, "t") as i64;

    // Wrong password: stored, refused by the broker, nothing delivered.
    let config = site.config(Some(port), &tls("bad-password"));
    let mut daemon = site.spawn(&config, false);
    wait_until("results stored", secs(60), || site.counts().1 == n);
    wait_until("the refusal logged", secs(30), || {
        site.log().contains("refused the connection")
    });
    assert_eq!(site.counts().2, n);
    assert!(
        !site.log().contains("guess"),
        "the password must never be logged"
    );
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());

    // The right one: everything acknowledged over TLS.
    let config = site.config(Some(port), &tls("good-password"));
    let mut daemon = site.spawn(&config, false);
    wait_until("every result acknowledged over TLS", secs(60), || {
        site.counts() == (n, n, 0)
    });
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
    let _ = broker.kill();
    let _ = broker.wait();
}

/// More triggers than the queue holds: the extra ones are answered "busy" at once, and every
/// accepted one gets its result.
#[test]
fn triggers_beyond_the_queue_are_answered_busy() {
    let site = Site::new();
    let config = site.config(None, "");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("queue = 1\n{text}")).unwrap();
    let mut daemon = site.spawn(&config, false);
    wait_until("the socket", secs(30), || site.socket().exists());
    let image = common::samples().join("ISIC_0001100.jpg");
    let askers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(BIN)
                .arg("capture")
                .arg("--socket")
                .arg(site.socket())
                .arg("--file")
                .arg(&image)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let replies: Vec<Value> = askers
        .into_iter()
        .map(|c| serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    let busy = replies
        .iter()
        .filter(|r| r["error"].as_str().is_some_and(|e| e.starts_with("busy")))
        .count();
    let done = replies.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(busy + done, 8, "{replies:?}");
    assert!(busy >= 1 && done >= 1, "{replies:?}");
    assert_eq!(site.counts().1, done as i64);
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
}

/// docs/mosquitto.acl on a real mosquitto with passwords: the device (username = its
/// device_id) delivers its results and answers commands; a dashboard reads the results but its
/// commands never reach the device; an operator's commands are answered.
#[test]
fn mosquitto_acl_lets_dashboards_read_and_only_operators_command() {
    let site = Site::new();
    let d = site.dir.path().join("acl");
    fs::create_dir_all(&d).unwrap();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(
            "set -e; touch passwd; mosquitto_passwd -b passwd dev1 d-pass; \
             mosquitto_passwd -b passwd dashboard b-pass; mosquitto_passwd -b passwd operator o-pass; \
             printf 'd-pass\\n' > device-password; chmod 644 passwd",
        )
        .current_dir(&d)
        .status()
        .unwrap();
    assert!(ok.success(), "mosquitto_passwd failed");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/mosquitto.acl"),
        d.join("acl"),
    )
    .unwrap();
    let port = free_port();
    let conf = d.join("mosquitto.conf");
    fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {p}/passwd\nacl_file {p}/acl\n",
            p = d.display()
        ),
    )
    .unwrap();
    let mut broker = spawn_broker(&site, &conf, port);

    let dashboard = Subscriber::start_as(port, &["dermaedge/#"], Some(("dashboard", "b-pass")));
    let operator = Subscriber::start_as(
        port,
        &["dermaedge/+/cmd/+/reply"],
        Some(("operator", "o-pass")),
    );
    let n = site.add_samples(1, "a") as i64;
    let extra = format!(
        "username = \"dev1\"\npassword_file = \"{}/device-password\"\n",
        d.display()
    );
    let config = site.config(Some(port), &extra);
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("prefix = \"t\"", "prefix = \"dermaedge\"");
    fs::write(&config, text).unwrap();
    let mut daemon = site.spawn(&config, false);
    wait_until("results read by the dashboard", secs(60), || {
        site.counts() == (n, n, 0) && dashboard.result_ids("dermaedge/dev1").len() as i64 >= n
    });

    // Both send a capture (no camera: answered with an error that echoes the request id).
    let capture = |who: &Subscriber, id: &str| {
        who.client
            .try_publish(
                "dermaedge/dev1/cmd/capture",
                QoS::AtLeastOnce,
                false,
                format!("{{\"request_id\":\"{id}\"}}"),
            )
            .unwrap();
    };
    let replies_to = |who: &Subscriber, id: &str| {
        who.on("dermaedge/dev1/cmd/capture/reply")
            .iter()
            .filter(|r| String::from_utf8_lossy(r).contains(id))
            .count()
    };
    capture(&dashboard, "from-dashboard");
    thread::sleep(Duration::from_millis(300));
    capture(&operator, "from-operator");
    wait_until("the operator's reply", secs(30), || {
        replies_to(&operator, "from-operator") == 1
    });
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        replies_to(&dashboard, "from-operator"),
        1,
        "dashboards read replies"
    );
    assert_eq!(
        replies_to(&dashboard, "from-dashboard") + replies_to(&operator, "from-dashboard"),
        0,
        "a dashboard's command must never reach the device"
    );
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, secs(30)).success());
    let _ = broker.kill();
    let _ = broker.wait();
}
