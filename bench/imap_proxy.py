"""Benchmark of the IMAP proxy against the real Dovecot of tests/peers (not a test; prints figures).

    .venv/bin/python bench/imap_proxy.py [--messages 5000] [--commands 3000] [--idle 1000]

1. mbsync of a mailbox of ``--messages`` messages through gatewayd and straight, alternately, 5 runs each:
   median wall times, and the median of the ratios of each back-to-back pair.
2. Added latency per command: a SELECT / FETCH / UID SEARCH mix over one connection, one command at a
   time, through and straight: p50 / p99 of each and the difference.
3. Memory: peak RSS of the proxy while it relays one ``--big-mb`` MB FETCH (streamed, not buffered), then
   RSS of the proxy process (a child, so the figure is its own) before and with ``--idle`` client
   connections logged in and in IDLE.

The peers must be running (``bash tests/peers/start.sh ROOT``, or any pytest run that uses them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from imap_helpers import RawClient, populate  # noqa: E402

UPSTREAM = 10143
USERS = ("alice", "bob", "carol")


def serve(upstream_port: int) -> None:
    """Child process: run the proxy alone on port 0, print the port, serve until stdin closes."""
    from gatewayd.imap.server import IMAPProxy
    from gatewayd.imap.session import Throttle
    from gatewayd.settings import IMAPSection, Settings, UpstreamIMAP

    async def main() -> None:
        settings = Settings(imap=IMAPSection(
            listen=["127.0.0.1:0"], allow_plaintext_auth=True, watch=False,
            upstream=UpstreamIMAP(host="127.0.0.1", port=upstream_port, timeout=30),
        ))
        proxy = IMAPProxy(settings, store=None, pipeline=None, ssl_context_factory=lambda: None,
                          throttle=Throttle(delay=0.0))
        servers = await proxy.start()
        print(servers[0].sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await proxy.shutdown(5)

    try:
        import uvloop  # the daemon uses it when installed
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def rss_kib(pid: int, field: str = "VmRSS:") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def hwm_kib(pid: int) -> int:
    """Peak resident memory of the process so far."""
    return rss_kib(pid, "VmHWM:")


def mbsync_once(port: int, mailbox: str, workdir: Path) -> float:
    maildir = workdir / uuid.uuid4().hex
    (maildir / ".state").mkdir(parents=True)
    rc = workdir / f"{maildir.name}.rc"
    rc.write_text(
        f"IMAPAccount a\nHost 127.0.0.1\nPort {port}\nUser alice\nPass password\nSSLType None\n"
        "AuthMechs LOGIN\n\n"
        f"IMAPStore far\nAccount a\n\nMaildirStore near\nPath {maildir}/\nInbox {maildir}/INBOX\n"
        f"SubFolders Verbatim\n\nChannel ch\nFar :far:\nNear :near:\nPatterns {mailbox}\nSync Pull\n"
        f"Create Near\nSyncState {maildir}/.state/\n"
    )
    started = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(rc), "-a"], check=True, timeout=600)
    elapsed = time.perf_counter() - started
    subprocess.run(["rm", "-rf", str(maildir)], check=True)
    return elapsed


def latencies(ports: tuple[int, int], mailbox: str, n: int, count: int) -> tuple[list[float], list[float]]:
    """Round-trip times of the same command mix on two connections (straight, through), interleaved."""
    conns = []
    for port in ports:
        conn = RawClient(port, timeout=60)
        conn.line()
        conn.send(b"l0 LOGIN alice password\r\nl1 SELECT %s\r\n" % mailbox.encode())
        conn.until_tagged(b"l1")
        conns.append(conn)
    rng = random.Random(1)
    out: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        tag = b"c%d" % i
        if i % 3 == 0:
            cmd = b"%s SELECT %s\r\n" % (tag, mailbox.encode())
        elif i % 3 == 1:
            cmd = b"%s FETCH %d (FLAGS BODY.PEEK[])\r\n" % (tag, rng.randint(1, count))
        else:
            cmd = b'%s UID SEARCH SUBJECT "message %d"\r\n' % (tag, rng.randint(0, count))
        for conn, times in zip(conns, out, strict=True):
            started = time.perf_counter()
            conn.send(cmd)
            conn.until_tagged(tag)
            times.append(time.perf_counter() - started)
    for conn in conns:
        conn.close()
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def idle_connections(port: int, n: int) -> list[RawClient]:
    clients = []
    for i in range(n):
        c = RawClient(port, timeout=60)
        c.line()
        user = USERS[i % len(USERS)].encode()
        c.send(b"a LOGIN %s password\r\nb SELECT INBOX\r\nc IDLE\r\n" % user)
        while not (line := c.line()).startswith((b"+ ", b"c ")):
            pass
        if line.startswith(b"c "):  # refused (e.g. the upstream's process limit): count what we have
            print(f"connection {i + 1} refused: {line!r}")
            c.close()
            break
        clients.append(c)
    return clients


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--commands", type=int, default=3000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--big-mb", type=int, default=50)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return

    child = subprocess.Popen([sys.executable, __file__, "--serve", str(UPSTREAM)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    port = int(child.stdout.readline())
    mailbox = f"gwbench-{uuid.uuid4().hex[:8]}"
    admin = RawClient(UPSTREAM)
    admin.line()
    admin.send(b"a LOGIN alice password\r\nb CREATE %s\r\n" % mailbox.encode())
    admin.until_tagged(b"b")
    try:
        t0 = time.perf_counter()
        populate(UPSTREAM, "alice", "password", mailbox, args.messages)
        print(f"populated {args.messages} messages in {time.perf_counter() - t0:.1f} s")

        with tempfile.TemporaryDirectory() as tmp:
            straight, through = [], []
            for _ in range(args.runs):
                straight.append(mbsync_once(UPSTREAM, mailbox, Path(tmp)))
                through.append(mbsync_once(port, mailbox, Path(tmp)))
        s, t = statistics.median(straight), statistics.median(through)
        # Each pair ran back to back: on a shared machine the median of pair ratios is the steadier figure.
        pairs = statistics.median(b / a for a, b in zip(straight, through, strict=True))
        runs = f"runs straight {[round(x, 2) for x in straight]}, through {[round(x, 2) for x in through]}"
        print(f"mbsync {args.messages} msgs: straight {s:.2f} s, through gatewayd {t:.2f} s, "
              f"ratio of medians {t / s:.3f}, median of paired ratios {pairs:.3f} ({runs})")

        lat_s, lat_t = latencies((UPSTREAM, port), mailbox, args.commands, args.messages)
        added = [t - s for s, t in zip(lat_s, lat_t, strict=True)]
        for p in (50, 99):
            a, b = pct(lat_s, p) * 1000, pct(lat_t, p) * 1000
            print(f"latency p{p}: straight {a:.3f} ms, through {b:.3f} ms; "
                  f"added (same command, paired) p{p} {pct(added, p) * 1000:.3f} ms")

        big = f"{mailbox}-big"
        admin.send(b"d CREATE %s\r\n" % big.encode())
        admin.until_tagged(b"d")
        body = b"".join(b"%08d %s\r\n" % (i, b"y" * 60) for i in range(args.big_mb * 1024 * 1024 // 71))
        raw = b"Subject: big\r\n\r\n" + body
        admin.send(b"e APPEND %s {%d+}\r\n%s\r\n" % (big.encode(), len(raw), raw))
        admin.until_tagged(b"e")
        before = hwm_kib(child.pid)
        conn = RawClient(port, timeout=120)
        conn.line()
        conn.send(b"f0 LOGIN alice password\r\nf1 SELECT %s\r\nf2 FETCH 1 BODY.PEEK[]\r\n" % big.encode())
        got = sum(len(line) for line in conn.until_tagged(b"f2"))
        conn.close()
        print(f"FETCH of a {len(raw) / 1e6:.0f} MB message through the proxy ({got / 1e6:.0f} MB read): "
              f"proxy peak RSS {before / 1024:.1f} -> {hwm_kib(child.pid) / 1024:.1f} MiB")
        admin.send(b"g DELETE %s\r\n" % big.encode())
        admin.until_tagged(b"g")

        base = rss_kib(child.pid)
        clients = idle_connections(port, args.idle)
        loaded = rss_kib(child.pid)
        print(f"proxy RSS: {base / 1024:.1f} MiB idle, {loaded / 1024:.1f} MiB with {len(clients)} IDLE "
              f"connections ({(loaded - base) / max(1, len(clients)):.1f} KiB per connection)")
        for c in clients:
            c.close()
    finally:
        admin.send(b"z DELETE %s\r\n" % mailbox.encode())
        with contextlib.suppress(Exception):
            admin.until_tagged(b"z")
        admin.close()
        child.stdin.close()
        child.wait(30)


if __name__ == "__main__":
    main()
