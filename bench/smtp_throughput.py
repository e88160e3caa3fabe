"""SMTP throughput: smtp-source -> gatewayd -> smtp-sink vs smtp-source -> smtp-sink straight, in one run.

Prints msg/s of each (accepted by the first hop, and delivered end to end through gatewayd), their ratio,
p50/p99 per-message latency added by gatewayd (a separate smtplib run), and gatewayd's RSS.

    python bench/smtp_throughput.py [--messages 2000] [--sessions 10] [--size 10240] [--classifier rules]
        [--runs 1]

With ``--runs N`` the paired straight/gatewayd measurement is repeated N times (straight first, then
gatewayd, in each pair) and the range and median of each figure are printed: on a shared 2-core machine one
run is noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    args = (
        ["/usr/sbin/smtp-sink"]
        + (["-u", "nobody"] if os.geteuid() == 0 else [])
        + [f"127.0.0.1:{port}", "256"]
    )
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    wait_port(port)
    return proc


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Seconds smtp-source needs to hand over ``messages`` (one connection per message)."""
    started = time.perf_counter()
    subprocess.run(
        [
            "/usr/sbin/smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "bench@mail.test",
            "-t",
            "alice@mail.test",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return time.perf_counter() - started


def latencies(port: int, count: int, threads: int, body: bytes) -> list[float]:
    out: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail("bench@mail.test", ["alice@mail.test"], body)
            with lock:
                out.append(time.perf_counter() - t0)

    pool = [threading.Thread(target=worker, args=(count // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sorted(out)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--classifier", default="rules", choices=["rules", "models"])
    ap.add_argument("--latency-messages", type=int, default=400)
    ap.add_argument("--runs", type=int, default=1, help="paired throughput runs (report range and median)")
    args = ap.parse_args()
    for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: install Debian's postfix package (tests/peers/install.sh)")

    work = Path(tempfile.mkdtemp(prefix="gatewayd-bench-"))
    sink_port, gw_port, http_port = free_port(), free_port(), free_port()
    sink = start_sink(sink_port)
    config = work / "gatewayd.toml"
    config.write_text(f"""
[smtp]
listen = ["127.0.0.1:{gw_port}"]
hostname = "bench.test"
[smtp.upstream]
port = {sink_port}
max_connections = 8
[spool]
path = "{work / "spool"}"
[http]
listen = "127.0.0.1:{http_port}"
[storage]
url = "sqlite+aiosqlite:///{work / "gatewayd.db"}"
[analysis]
classifier = "{args.classifier}"
[logging]
level = "warning"
""")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "run", "-c", str(config)], cwd=ROOT, stdin=subprocess.DEVNULL
    )
    try:
        wait_port(gw_port)
        wait_port(http_port)
        n, s, size = args.messages, args.sessions, args.size
        smtp_source(sink_port, 50, s, size)  # warm up both paths
        smtp_source(gw_port, 50, s, size)
        base = metric(http_port, "gatewayd_delivery_recipients_total")

        pairs: list[tuple[float, float, float]] = []  # seconds: straight, accepted, end to end
        cpu: list[float] = []  # gatewayd CPU seconds per message (all threads), less noisy than msg/s
        for _ in range(args.runs):
            straight = smtp_source(sink_port, n, s, size)
            t0, c0 = time.perf_counter(), cpu_seconds(gw.pid)
            accepted = smtp_source(gw_port, n, s, size)
            deadline = time.monotonic() + 600
            while (
                metric(http_port, "gatewayd_delivery_recipients_total") < base + n
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            pairs.append((straight, accepted, time.perf_counter() - t0))
            cpu.append((cpu_seconds(gw.pid) - c0) / n)
            base += n
        rss, hwm = rss_mb(gw.pid)

        body = b"Subject: latency\r\nFrom: bench@mail.test\r\nTo: alice@mail.test\r\n\r\n" + (
            b"x" * 76 + b"\r\n"
        ) * max(1, size // 78)
        direct = latencies(sink_port, args.latency_messages, s, body)
        through = latencies(gw_port, args.latency_messages, s, body)

        print(
            f"# smtp_throughput: {n} messages x {size} B, {s} sessions, one connection per message, "
            f"classifier={args.classifier}, {os.cpu_count()} CPUs"
        )
        for i, (straight, accepted, end_to_end) in enumerate(pairs, 1):
            label = f"run {i}/{len(pairs)}" if len(pairs) > 1 else ""
            print(f"straight  smtp-source -> smtp-sink           {n / straight:8.0f} msg/s {label}")
            print(
                f"gatewayd  smtp-source -> gatewayd (accepted) {n / accepted:8.0f} msg/s"
                f"   {100 * straight / accepted:5.1f} % of straight"
            )
            print(
                f"gatewayd  end to end, delivered to smtp-sink {n / end_to_end:8.0f} msg/s"
                f"   {100 * straight / end_to_end:5.1f} % of straight"
                f"   ({1000 * cpu[i - 1]:.2f} ms CPU per msg)"
            )
        if len(pairs) > 1:
            for name, values in (
                ("straight msg/s", [n / p[0] for p in pairs]),
                ("accepted msg/s", [n / p[1] for p in pairs]),
                ("end-to-end msg/s", [n / p[2] for p in pairs]),
                ("accepted % of straight", [100 * p[0] / p[1] for p in pairs]),
                ("end-to-end % of straight", [100 * p[0] / p[2] for p in pairs]),
                ("gatewayd CPU ms per msg", [1000 * c for c in cpu]),
                ("gatewayd CPU cores busy", [c * n / p[2] for c, p in zip(cpu, pairs, strict=True)]),
            ):
                print(
                    f"summary   {name:<26} min {min(values):7.1f}  median {statistics.median(values):7.1f}"
                    f"  max {max(values):7.1f}"
                )
        print(
            f"latency   p50 {pct(direct, 0.5):6.2f} ms straight, {pct(through, 0.5):6.2f} ms through "
            f"(+{pct(through, 0.5) - pct(direct, 0.5):.2f} ms)"
        )
        print(
            f"latency   p99 {pct(direct, 0.99):6.2f} ms straight, {pct(through, 0.99):6.2f} ms through "
            f"(+{pct(through, 0.99) - pct(direct, 0.99):.2f} ms)"
        )
        print(
            f"gatewayd  RSS {rss:.0f} MB now, {hwm:.0f} MB peak; mean latency through "
            f"{statistics.mean(through) * 1000:.2f} ms"
        )
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
