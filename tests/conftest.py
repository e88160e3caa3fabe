"""Session fixtures for the real peers the tests talk to: Dovecot + Postfix, smtp-sink, PostgreSQL, TLS.

Nothing here imports gatewayd: the daemon's own fixtures live in ``tests/gatewayd_proc.py``.

- ``peers``: a private Dovecot (IMAP, LMTP) and Postfix (SMTP into Dovecot) on 127.0.0.1, started once
  per session by ``tests/peers/start.sh`` (see that script for ports and users). Several pytest
  sessions may run at once on one machine; they share one instance, and the last one out stops it.
- ``smtp_sink``: a factory of Postfix's ``smtp-sink`` on free ports, optionally rejecting commands.
- ``pg_url``: the PostgreSQL URL from ``GATEWAYD_TEST_PG_URL`` (``make test`` sets it).
- ``tls_ca``: a trustme CA and a server certificate for 127.0.0.1/localhost, as files.

A missing tool or server fails the test with what to do about it; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import fcntl
import hashlib
import imaplib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

#: gatewayd_proc holds the fixture that runs a real gatewayd process (gatewayd_factory).
pytest_plugins = ("gatewayd_proc",)

TESTS = Path(__file__).resolve().parent
PEERS_SCRIPTS = TESTS / "peers"
#: Where start.sh puts the peers' files unless GATEWAYD_PEERS_ROOT says otherwise. Outside pytest's
#: own tmp tree on purpose: that tree is mode 0700 and Dovecot's mail processes run as ``vmail``.
DEFAULT_PEERS_ROOT = Path("/tmp/gatewayd-peers")
PEER_PORTS = {"imap": 10143, "imaps": 10993, "lmtp": 10024, "auth": 10030, "smtp": 10025, "submission": 10587}
REQUIRED_TOOLS = ("dovecot", "doveconf", "postfix", "swaks", "smtp-sink", "openssl")
SMTP_SINK = "/usr/sbin/smtp-sink"
MARKER = "started-by-start.sh"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Poll until host:port accepts connections; raise TimeoutError past the deadline."""
    deadline = time.monotonic() + timeout
    while not port_answers(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on {host}:{port} after {timeout:g} s")
        time.sleep(0.05)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/lib/postfix/sbin")


def missing_tools(tools: tuple[str, ...] = REQUIRED_TOOLS) -> list[str]:
    """The tools from ``tools`` that are not installed."""
    return [t for t in tools if _which(t) is None]


def _fail_missing(tools: list[str]) -> None:
    pytest.fail(
        f"missing {', '.join(tools)}: run `sh tests/peers/install.sh` as root (Debian 12), "
        "or `make test`, which does it",
        pytrace=False,
    )


# --------------------------------------------------------------------------------------------- peers


@dataclass
class Peers:
    """The running Dovecot + Postfix pair and helpers to look into the mailboxes.

    Timing to expect: a failed AUTH is answered after ~0.5 s (Dovecot flushes failures on a 0.5 s
    timer even with ``auth_failure_delay = 0``). start.sh turns Dovecot's per-IP auth penalty off, so
    failed logins in one test do not slow later ones (peers from the reference recipe in
    /work/shared/peers keep it: 2-15 s after a failure from 127.0.0.1).
    """

    root: Path
    cert: Path
    users: dict[str, str]
    domain: str = "mail.test"
    imap_port: int = PEER_PORTS["imap"]
    imaps_port: int = PEER_PORTS["imaps"]
    lmtp_port: int = PEER_PORTS["lmtp"]
    auth_port: int = PEER_PORTS["auth"]
    smtp_port: int = PEER_PORTS["smtp"]
    submission_port: int = PEER_PORTS["submission"]
    host: str = "127.0.0.1"
    #: Dovecot master user: log in as ``f"{user}{master_separator}{master_user}"`` with master_password.
    master_user: str | None = "gwmaster"
    master_password: str = "masterpass"
    master_separator: str = "*"

    def address(self, user: str) -> str:
        """The mail address of a test user: ``alice`` -> ``alice@mail.test``."""
        return f"{user}@{self.domain}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the peers' self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def imap_login(self, user: str, *, tls: bool = False) -> imaplib.IMAP4:
        """A logged-in imaplib connection straight to Dovecot (IMAPS when ``tls``)."""
        conn: imaplib.IMAP4
        if tls:
            conn = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=self.ssl_context(), timeout=10)
        else:
            conn = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        try:
            conn.login(user, self.users[user])
        except BaseException:
            with contextlib.suppress(Exception):
                conn.shutdown()
            raise
        return conn

    def fetch_inbox(self, user: str) -> list[bytes]:
        """Every message in ``user``'s INBOX, oldest first, without setting \\Seen."""
        conn = self.imap_login(user)
        try:
            conn.select("INBOX", readonly=True)
            typ, data = conn.uid("SEARCH", "ALL")
            assert typ == "OK", data
            uids = data[0].split() if data and data[0] else []
            messages: list[bytes] = []
            for uid in uids:
                typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                assert typ == "OK", parts
                messages.extend(p[1] for p in parts if isinstance(p, tuple))
            return messages
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def wait_for_messages(
        self,
        user: str,
        match: str | Callable[[bytes], bool],
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[bytes]:
        """Poll ``user``'s INBOX until ``count`` messages match, and return them (oldest first).

        ``match`` is either a predicate on the raw message or a string that must equal the decoded
        Subject. Fails the test with what was seen when the deadline passes.
        """
        pred = _subject_is(match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.fetch_inbox(user) if pred(m)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{user}'s INBOX has {len(found)} of {count} matching message(s) after {timeout:g} s "
                    f"(match={match!r}); Postfix log: {self.root / 'postfix.log'}",
                    pytrace=False,
                )
            time.sleep(0.2)

    def wait_for_message(
        self, user: str, match: str | Callable[[bytes], bool], timeout: float = 30.0
    ) -> bytes:
        """Poll ``user``'s INBOX until one message matches (see ``wait_for_messages``) and return it."""
        return self.wait_for_messages(user, match, 1, timeout)[0]

    def purge_inbox(self, user: str) -> None:
        """Delete every message in ``user``'s INBOX."""
        conn = self.imap_login(user)
        try:
            typ, data = conn.select("INBOX")
            assert typ == "OK", data
            if int(data[0] or b"0") > 0:
                conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
                conn.expunge()
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


def _subject_is(subject: str) -> Callable[[bytes], bool]:
    def pred(raw: bytes) -> bool:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        return str(msg.get("Subject", "")) == subject

    return pred


def _read_users(path: Path) -> dict[str, str]:
    users = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name and rest.startswith("{PLAIN}"):
            users[name] = rest.removeprefix("{PLAIN}").split(":", 1)[0]
    return users


def _foreign_peers_root() -> Path | None:
    """The root of a Dovecot that some other recipe (/work/shared/peers) started on our ports, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dovecot") and b"-c" in argv:
            i = argv.index(b"-c")
            if i + 1 < len(argv):
                conf = Path(os.fsdecode(argv[i + 1]))
                with contextlib.suppress(OSError):
                    if f"port = {PEER_PORTS['imap']}" in conf.read_text():
                        return conf.parent
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _live_clients(clients: Path) -> list[Path]:
    live: list[Path] = []
    if not clients.is_dir():
        return live
    for f in clients.iterdir():
        try:
            os.kill(int(f.name), 0)
            live.append(f)
        except (ValueError, ProcessLookupError):
            f.unlink(missing_ok=True)
        except PermissionError:
            live.append(f)
    return live


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    """Dovecot + Postfix on 127.0.0.1 (ports in ``PEER_PORTS``), shared by concurrent pytest sessions.

    Started by tests/peers/start.sh into ``$GATEWAYD_PEERS_ROOT`` (default /tmp/gatewayd-peers)
    unless already running; stopped by the last session that used it, if a session started it.
    """
    missing = missing_tools()
    if missing:
        _fail_missing(missing)
    root = Path(os.environ.get("GATEWAYD_PEERS_ROOT", str(DEFAULT_PEERS_ROOT)))
    root.mkdir(parents=True, exist_ok=True)
    clients: Path | None = root / "clients"
    me: Path | None = root / "clients" / str(os.getpid())
    with _locked(root.with_name(root.name + ".lock")):
        running = [name for name, port in PEER_PORTS.items() if port_answers(port)]
        ours = (root / MARKER).exists()
        recipe = hashlib.sha256((PEERS_SCRIPTS / "start.sh").read_bytes()).hexdigest()
        if ours and running and (root / MARKER).read_text() != recipe and not _live_clients(root / "clients"):
            _run_script("stop.sh", root)  # started from an older start.sh and nobody uses it: renew
            running = []
        if running and not ours:
            foreign = _foreign_peers_root()
            if len(running) < len(PEER_PORTS) or foreign is None or not (foreign / "users").exists():
                pytest.fail(
                    f"peer ports {running} are held by something tests/peers/start.sh did not start; "
                    "stop it or set GATEWAYD_PEERS_ROOT to the root it was started with",
                    pytrace=False,
                )
            # The reference recipe's instance (same ports and layout): use it, never stop it.
            root, clients, me = foreign, None, None
        elif len(running) < len(PEER_PORTS):
            if ours:  # half dead: start afresh
                _run_script("stop.sh", root)
            (root / MARKER).unlink(missing_ok=True)
            _run_script("start.sh", root)
            (root / MARKER).write_text(recipe)
        if clients is not None and me is not None:
            clients.mkdir(exist_ok=True)
            me.touch()
    users = _read_users(root / "users")
    master = root / "master-users"
    peers = Peers(
        root=root,
        cert=root / "tls" / "cert.pem",
        users=users,
        master_user=_read_users(master).popitem()[0] if master.exists() else None,
    )
    try:
        yield peers
    finally:
        if clients is not None and me is not None:
            with _locked(root.with_name(root.name + ".lock")):
                me.unlink(missing_ok=True)
                if not _live_clients(clients) and (root / MARKER).exists():
                    _run_script("stop.sh", root, check=False)
                    (root / MARKER).unlink(missing_ok=True)


def _run_script(name: str, root: Path, *, check: bool = True) -> None:
    proc = subprocess.run(
        ["bash", str(PEERS_SCRIPTS / name), str(root)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"tests/peers/{name} {root} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)


# ----------------------------------------------------------------------------------------- smtp-sink


@dataclass
class SinkMessage:
    """One transaction that smtp-sink dumped: the envelope and the message as received.

    smtp-sink stores lines with LF only (it drops every CR) and undoes dot-stuffing.
    """

    mail_from: str
    rcpt_to: list[str]
    data: bytes


@dataclass
class SmtpSink:
    """A running ``smtp-sink``; ``port`` is where it listens on 127.0.0.1."""

    port: int
    proc: subprocess.Popen[bytes]
    dump_dir: Path | None = None
    host: str = "127.0.0.1"

    def messages(self) -> list[SinkMessage]:
        """What was dumped so far, in arrival order (needs ``dump=True``)."""
        if self.dump_dir is None:
            raise RuntimeError("smtp_sink(dump=True) is needed to see messages")
        # smtp-sink creates the file at MAIL and closes it after the final "."; a file it still
        # holds open is a transaction in progress. List the files first, then the open ones.
        files = [p for p in self.dump_dir.rglob("*") if p.is_file()]
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        held = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    held.add(os.readlink(fd))
        done = []
        for p in files:
            if str(p) in held:
                continue
            with contextlib.suppress(FileNotFoundError):  # RSET or a dropped session unlinks it
                done.append((p.stat().st_mtime_ns, p.name, p.read_bytes()))
        return [_parse_dump(raw) for _, _, raw in sorted(done)]

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> list[SinkMessage]:
        """Poll the dump folder until ``count`` complete messages are there; fail past the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= count:
                return msgs
            if time.monotonic() > deadline:
                pytest.fail(
                    f"smtp-sink got {len(msgs)} of {count} message(s) in {timeout:g} s", pytrace=False
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (also done at teardown); the port then refuses connections."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _parse_dump(raw: bytes) -> SinkMessage:
    # smtp-sink's dump: its own X-* headers, a 3-line Received header, the message, then one "\n".
    mail_from, rcpts = "", []
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and not lines[i].startswith(b"Received: "):
        name, _, value = lines[i].partition(b": ")
        if name == b"X-Mail-Args":
            mail_from = value.split(b" ", 1)[0].decode("utf-8", "replace").strip("<>")
        elif name == b"X-Rcpt-Args":
            rcpts.append(value.split(b" ", 1)[0].decode("utf-8", "replace").strip("<>"))
        i += 1
    i += 3
    body = b"\n".join(lines[i:])
    return SinkMessage(mail_from=mail_from, rcpt_to=rcpts, data=body.removesuffix(b"\n"))


@dataclass
class SinkFactory:
    sinks: list[SmtpSink] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def __call__(
        self,
        *,
        hard_reject: str | tuple[str, ...] = (),
        soft_reject: str | tuple[str, ...] = (),
        disconnect_421: str | tuple[str, ...] = (),
        hard_reply: str | None = None,
        soft_reply: str | None = None,
        dump: bool = False,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> SmtpSink:
        """Start smtp-sink on 127.0.0.1 and wait until it answers.

        ``hard_reject``/``soft_reject`` name SMTP commands (``"RCPT"``, ``"DATA"``, ``"."`` for the end
        of data, ``"MAIL"``, ``"CONNECT"``...) answered with 5xx (``-f``) or 4xx (``-r``); the replies
        default to ``500 5.3.0 Error: command failed`` / ``450 4.3.0 Error: command failed`` and can be
        replaced by ``hard_reply`` (``-B``) / ``soft_reply`` (``-b``). ``disconnect_421`` (``-Q``) answers 421
        and hangs up. ``dump`` keeps every transaction (``-d``) for ``SmtpSink.messages()``.
        ``port`` reuses a port, e.g. to bring an upstream "back up" where it was.
        """
        if not os.access(SMTP_SINK, os.X_OK):
            _fail_missing(["smtp-sink (package postfix)"])
        args = [SMTP_SINK]
        for flag, cmds in (("-f", hard_reject), ("-r", soft_reject), ("-Q", disconnect_421)):
            if cmds:
                args += [flag, cmds if isinstance(cmds, str) else ",".join(cmds)]
        if hard_reply:
            args += ["-B", hard_reply]
        if soft_reply:
            args += ["-b", soft_reply]
        dump_dir = None
        if dump:
            # Not under pytest's tmp tree (mode 0700): smtp-sink writes as the unprivileged user below.
            dump_dir = Path(tempfile.mkdtemp(prefix="gatewayd-sink-"))
            dump_dir.chmod(0o777)
            self.dirs.append(dump_dir)
            args += ["-d", f"{dump_dir}/%Y%m%d%H%M%S."]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        port = port or free_port()
        args += [*extra_args, f"127.0.0.1:{port}", "128"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        sink = SmtpSink(port=port, proc=proc, dump_dir=dump_dir)
        self.sinks.append(sink)
        deadline = time.monotonic() + 10
        while not port_answers(port):
            if proc.poll() is not None:
                pytest.fail(f"smtp-sink exited with {proc.returncode}: {' '.join(args)}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"smtp-sink does not answer on 127.0.0.1:{port}", pytrace=False)
            time.sleep(0.02)
        return sink


@pytest.fixture
def smtp_sink() -> Iterator[SinkFactory]:
    """Factory: ``sink = smtp_sink(hard_reject="RCPT", dump=True)``; ``sink.port``. All killed at teardown."""
    factory = SinkFactory()
    try:
        yield factory
    finally:
        for sink in factory.sinks:
            sink.stop()
        for d in factory.dirs:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------- PostgreSQL, TLS


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The SQLAlchemy URL of a real PostgreSQL from GATEWAYD_TEST_PG_URL; fails when it is unset."""
    url = os.environ.get("GATEWAYD_TEST_PG_URL", "")
    if not url:
        pytest.fail(
            "GATEWAYD_TEST_PG_URL is not set: run `make test`, or export e.g. "
            "GATEWAYD_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test "
            "(tests/peers/postgres.sh starts a private server and prints its URL)",
            pytrace=False,
        )
    return url


@dataclass
class TlsFiles:
    """A test CA and a server certificate for 127.0.0.1 / localhost / ::1, as PEM files."""

    ca: trustme.CA
    ca_path: Path
    cert_path: Path  # server certificate followed by its chain
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """trustme CA + server certificate for 127.0.0.1, localhost and ::1, written to files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    d = tmp_path_factory.mktemp("tls")
    files = TlsFiles(ca=ca, ca_path=d / "ca.pem", cert_path=d / "cert.pem", key_path=d / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_path))
    server.private_key_pem.write_to_path(str(files.key_path))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(files.cert_path), append=i > 0)
    return files


# ------------------------------------------------------------------------------------------ markers


@pytest.fixture(autouse=True)
def _marker_requirements(request: pytest.FixtureRequest) -> None:
    """Tests marked ``peers`` get the peers started; ``postgres`` ones fail at once without a URL."""
    if request.node.get_closest_marker("peers") is not None:
        request.getfixturevalue("peers")
    if request.node.get_closest_marker("postgres") is not None:
        request.getfixturevalue("pg_url")
