"""Benchmark the daemon with real components: mosquitto on loopback, the release binary, the
bundled samples as a watched folder. Prints one JSON object:

- ready_ms: from process start to the "ready" log line (models loaded, database open);
- throughput: results/s from frame to PUBACK over `--files` images (folder source);
- load: daemon CPU % and peak RSS while analyzing;
- idle: CPU % and RSS over 10 s with nothing to do (models loaded, broker connected);
- drain: seconds to deliver a backlog of `--backlog` results stored while the broker was down.

Usage: python scripts/bench_daemon.py [--bin target/release/dermaedge] [--files 40] [--backlog 1000]
"""

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker(port: int, d: Path) -> subprocess.Popen:
    conf = d / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    p = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def counts(db: Path):
    if not db.exists():
        return (0, 0)
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        r = c.execute(
            "SELECT (SELECT count(*) FROM results),"
            " (SELECT count(*) FROM outbox WHERE delivered_at IS NULL)"
        ).fetchone()
        c.close()
        return r
    except sqlite3.Error:
        return (0, 0)


def wait(cond, limit: float, what: str):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target/release/dermaedge"))
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--backlog", type=int, default=1000)
    ap.add_argument("--precision", default="float32")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dermaedge-bench-"))
    inbox, state = tmp / "inbox", tmp / "state"
    inbox.mkdir()
    port = free_port()
    b = broker(port, tmp)
    cfg = tmp / "d.toml"
    cfg.write_text(
        f'device_id = "bench"\nstate_dir = "{state}"\nmodels = "{REPO / "models"}"\n'
        f'precision = "{a.precision}"\nsocket = ""\nsource = "folder"\n'
        f'[folder]\npath = "{inbox}"\npoll_ms = 100\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nallow_insecure = true\n'
    )
    log = open(tmp / "daemon.log", "w")
    out = {"machine": os.uname().machine, "cpus": os.cpu_count(), "precision": a.precision}

    # Start to READY.
    t0 = time.monotonic()
    d = subprocess.Popen([a.bin, "run", "--config", str(cfg)], stderr=log)
    wait(lambda: "ready in" in (tmp / "daemon.log").read_text(), 60, "ready")
    out["ready_ms"] = round((time.monotonic() - t0) * 1e3)
    time.sleep(1.0)

    # Throughput, frame to PUBACK.
    samples = sorted((REPO / "tests/samples").glob("*.jpg"))
    for i in range(a.files):
        src = samples[i % len(samples)]
        shutil.copy(src, inbox / f"{i:04d}-{src.name}")
    c0, t0 = cpu_seconds(d.pid), time.monotonic()
    wait(lambda: counts(state / "dermaedge.db") == (a.files, 0), 600, "results delivered")
    dt = time.monotonic() - t0
    out["throughput_results_per_s"] = round(a.files / dt, 2)
    out["load_cpu_percent"] = round(100 * (cpu_seconds(d.pid) - c0) / dt, 1)
    out["load_peak_rss_mb"] = round(status_kb(d.pid, "VmHWM") / 1024, 1)

    # Idle.
    time.sleep(2.0)
    c0, t0 = cpu_seconds(d.pid), time.monotonic()
    time.sleep(10.0)
    out["idle_cpu_percent"] = round(100 * (cpu_seconds(d.pid) - c0) / (time.monotonic() - t0), 2)
    out["idle_rss_mb"] = round(status_kb(d.pid, "VmRSS") / 1024, 1)
    d.terminate()
    d.wait(30)

    # Backlog: copy stored results into `backlog` undelivered ones (new ids), then start.
    db = sqlite3.connect(state / "dermaedge.db")
    msg = json.loads(db.execute("SELECT message FROM results LIMIT 1").fetchone()[0])
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    with db:
        for _ in range(a.backlog):
            cid = str(uuid.uuid4())
            msg["id"] = cid
            db.execute(
                "INSERT INTO captures (id, captured_at, source, trigger) VALUES (?, ?, 'folder', 'folder')",
                (cid, now),
            )
            db.execute(
                "INSERT INTO results (capture_id, status, message) VALUES (?, 'ok', ?)",
                (cid, json.dumps(msg)),
            )
            db.execute("INSERT INTO outbox (capture_id, created_at) VALUES (?, ?)", (cid, now))
    db.close()
    total = a.files + a.backlog
    t0 = time.monotonic()
    d = subprocess.Popen([a.bin, "run", "--config", str(cfg)], stderr=log)
    wait(lambda: counts(state / "dermaedge.db") == (total, 0), 300, "backlog drained")
    out["backlog"] = a.backlog
    out["backlog_drain_s_incl_start"] = round(time.monotonic() - t0, 2)
    d.terminate()
    d.wait(30)
    b.terminate()
    b.wait()
    shutil.rmtree(tmp)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
