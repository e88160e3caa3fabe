"""The IMAP proxy in front of the real Dovecot: real clients (imaplib, curl, raw sockets) through gatewayd."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import os
import re
import shutil
import smtplib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import Peers, TlsFiles, free_port
from imap_helpers import ProxyThread, RawClient, imap_settings
from prometheus_client import REGISTRY

from gatewayd.analysis.pipeline import Pipeline
from gatewayd.analysis.rules import RulesClassifier
from gatewayd.ids import new_id
from gatewayd.imap import capability
from gatewayd.imap.framing import quote
from gatewayd.imap.session import Throttle
from gatewayd.imap.watcher import account_of, junk_mailbox, keywords_for, record_from
from gatewayd.mime import extract_facts
from gatewayd.settings import MasterUser, Settings, UpstreamIMAP
from gatewayd.store.facade import Store
from gatewayd.store.records import MessageRecord

pytestmark = pytest.mark.peers

USER = "alice"
PASSWORD = "password"


@pytest.fixture
def make_proxy(peers: Peers) -> Iterator[Callable[..., ProxyThread]]:
    started: list[ProxyThread] = []

    def make(**kw: Any) -> ProxyThread:
        names = ("store", "pipeline", "ssl_context_factory", "throttle", "store_factory", "first_scan")
        opts = {k: kw.pop(k) for k in names if k in kw}
        proxy = ProxyThread(imap_settings(peers.imap_port, **kw), **opts)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyThread]) -> ProxyThread:
    return make_proxy()


@pytest.fixture
def box(peers: Peers) -> Iterator[str]:
    """A fresh mailbox of alice's for one test, so tests sharing Dovecot never see each other's mail."""
    name = f"gwtest-{uuid.uuid4().hex[:12]}"
    conn = peers.imap_login(USER)
    assert conn.create(name)[0] == "OK"
    conn.logout()
    yield name
    with contextlib.suppress(Exception):
        conn = peers.imap_login(USER)
        conn.delete(name)
        conn.logout()


def client(proxy: ProxyThread, user: str = USER) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    typ, _ = conn.login(user, PASSWORD)
    assert typ == "OK"
    return conn


def message(subject: str, body: bytes = b"hello\r\n", **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: sender@example.org\r\nTo: alice@mail.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n{head}\r\n").encode() + body


def append_straight(peers: Peers, box: str, raw: bytes) -> None:
    conn = peers.imap_login(USER)
    assert conn.append(box, None, None, raw)[0] == "OK"
    conn.logout()


# ----------------------------------------------------------------------------------------- login


def test_login_and_capabilities_are_filtered(proxy: ProxyThread) -> None:
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    assert "AUTH=PLAIN" in conn.capabilities and "LITERAL+" in conn.capabilities
    typ, data = conn.login(USER, PASSWORD)
    assert typ == "OK"
    typ, data = conn.capability()
    caps = set(data[0].decode().upper().split())
    assert {"IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "LITERAL+", "BINARY"} <= caps
    assert not any(c.startswith(("COMPRESS", "AUTH=")) or c in ("STARTTLS", "LOGINDISABLED") for c in caps)
    conn.logout()


def test_authenticate_plain_with_and_without_initial_response(proxy: ProxyThread) -> None:
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    typ, _ = conn.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())  # imaplib: no SASL-IR
    assert typ == "OK" and conn.select("INBOX")[0] == "OK"
    conn.logout()
    raw = RawClient(proxy.port)
    raw.line()
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    raw.send(b"a1 AUTHENTICATE PLAIN " + token + b"\r\n")
    assert raw.until_tagged(b"a1")[-1].startswith(b"a1 OK")
    raw.close()


def test_wrong_password_is_authenticationfailed_and_throttled(make_proxy: Callable[..., ProxyThread]) -> None:
    proxy = make_proxy(throttle=Throttle(delay=0.0, max_failures=2))
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    for _ in range(2):
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            conn.login(USER, "wrong")
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        conn.login(USER, PASSWORD)  # the user is throttled now, even with the right password
    conn.shutdown()


def test_upstream_down_answers_unavailable_quickly(make_proxy: Callable[..., ProxyThread]) -> None:
    proxy = make_proxy(upstream=UpstreamIMAP(host="127.0.0.1", port=free_port(), timeout=5))
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        conn.login(USER, PASSWORD)
    assert time.monotonic() - started < 2
    assert conn.noop()[0] == "OK"  # the client connection survives
    conn.logout()


def test_upstream_that_never_answers_times_out(make_proxy: Callable[..., ProxyThread]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        proxy = make_proxy(upstream=UpstreamIMAP(host="127.0.0.1", port=port, timeout=0.5))
        conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            conn.login(USER, PASSWORD)
        conn.shutdown()


def test_garbage_before_login_is_bad_and_connection_survives(proxy: ProxyThread) -> None:
    raw = RawClient(proxy.port)
    assert raw.line().startswith(b"* OK [CAPABILITY ")
    for junk in (b"\r\n", b"hello\r\n", b"a1 FROB\r\n", b"\x00\xff\xfe\r\n", b'a2 LOGIN "unterminated\r\n',
                 b"a3 SELECT INBOX\r\n", b"a4 " + b"x" * 70_000 + b"\r\n", b"a5 LOGIN {999999}\r\n"):
        raw.send(junk)
        assert b" BAD " in raw.line()
    raw.send(b"a6 NOOP\r\n")
    assert raw.line() == b"a6 OK NOOP completed\r\n"
    raw.send(b"a7 LOGIN {5}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"alice {8}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"password\r\n")
    assert raw.line().startswith(b"a7 OK")
    raw.send(b"a8 LOGOUT\r\n")
    assert raw.until_tagged(b"a8")[-1].startswith(b"a8 OK")
    raw.close()


def test_garbage_after_login_is_bad_and_connection_survives(proxy: ProxyThread) -> None:
    raw = RawClient(proxy.port)
    raw.line()
    raw.send(b"a1 LOGIN alice password\r\n")
    raw.until_tagged(b"a1")
    raw.send(b"a2 FROB\r\n\x00\x01garbage\r\na3 " + b"y" * 70_000 + b"\r\na4 COMPRESS DEFLATE\r\na5 NOOP\r\n")
    lines = raw.until_tagged(b"a5")
    assert any(line.startswith(b"a2 BAD") for line in lines)
    assert any(line.startswith(b"a3 BAD") for line in lines)
    assert any(line.startswith(b"a4 NO") for line in lines)
    assert lines[-1].startswith(b"a5 OK")
    raw.close()


# ---------------------------------------------------------------------------------- mailbox work


def test_select_fetch_search_store_move(proxy: ProxyThread, peers: Peers, box: str) -> None:
    for i in range(3):
        append_straight(peers, box, message(f"msg {i}"))
    conn = client(proxy)
    typ, data = conn.select(box)
    assert typ == "OK" and data == [b"3"]
    typ, data = conn.search(None, "SUBJECT", '"msg 1"')
    assert data == [b"2"]
    typ, data = conn.fetch("1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [part[1] for part in data if isinstance(part, tuple)]
    assert subjects == [f"Subject: msg {i}\r\n\r\n".encode() for i in range(3)]
    typ, data = conn.store("2", "+FLAGS", "(\\Flagged $Custom)")
    assert typ == "OK" and b"\\Flagged" in data[0] and b"$Custom" in data[0]
    conn.create(box + "-moved")
    try:
        typ, data = conn.uid("MOVE", "1", box + "-moved")
        assert typ == "OK"
        assert conn.select(box + "-moved")[1] == [b"1"]
    finally:
        conn.close()
        conn.delete(box + "-moved")
    conn.logout()


def test_uid_fetch_of_a_large_message_streams_through(proxy: ProxyThread, peers: Peers, box: str) -> None:
    count = 5 * 1024 * 1024 // 70
    lines = b"".join(b"%07d %s\r\n" % (i, os.urandom(30).hex().encode()) for i in range(count))
    raw = message("large", lines)
    append_straight(peers, box, raw)
    conn = client(proxy)
    conn.select(box, readonly=True)
    typ, data = conn.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == raw  # type: ignore[index]
    typ, data = conn.uid("FETCH", "1", "(BINARY.PEEK[1])")  # ~{n} literals from upstream
    assert typ == "OK"
    conn.logout()


def test_append_with_synchronising_and_non_synchronising_literals(
    proxy: ProxyThread, peers: Peers, box: str
) -> None:
    conn = client(proxy)
    assert conn.append(box, None, None, message("sync"))[0] == "OK"  # imaplib waits for "+"
    conn.logout()
    raw = RawClient(proxy.port)
    raw.line()
    raw.send(b"a1 LOGIN alice password\r\n")
    raw.until_tagged(b"a1")
    body = message("plus", b"x" * 200_000 + b"\r\n")
    binary = message("binary", b"nul\x00byte\r\n")
    raw.send(b"a2 APPEND %s {%d+}\r\n%s\r\n" % (box.encode(), len(body), body))
    raw.send(b"a3 APPEND %s ~{%d+}\r\n%s\r\n" % (box.encode(), len(binary), binary))
    assert raw.until_tagged(b"a2")[-1].startswith(b"a2 OK [APPENDUID")
    assert raw.until_tagged(b"a3")[-1].startswith(b"a3 OK [APPENDUID")
    # A synchronising literal the upstream refuses: the client gets NO and both sides stay in step.
    raw.send(b"a4 APPEND no-such-mailbox-%s {5}\r\n" % uuid.uuid4().hex.encode())
    reply = raw.line()
    if reply.startswith(b"+"):
        raw.send(b"hello\r\n")
        reply = raw.until_tagged(b"a4")[-1]
    assert reply.startswith(b"a4 NO")
    raw.send(b"a5 NOOP\r\n")
    assert raw.until_tagged(b"a5")[-1].startswith(b"a5 OK")
    raw.close()
    conn = peers.imap_login(USER)
    conn.select(box, readonly=True)
    _, data = conn.fetch("1:3", "(BODY.PEEK[])")
    got = [part[1] for part in data if isinstance(part, tuple)]
    # Dovecot shows a stored NUL as 0x80 outside BINARY fetches: what went through was the NUL.
    assert got[1:] == [body, binary.replace(b"\x00", b"\x80")]
    conn.logout()


def test_client_vanishing_mid_literal_closes_upstream(proxy: ProxyThread, peers: Peers, box: str) -> None:
    raw = RawClient(proxy.port)
    raw.line()
    raw.send(b"a1 LOGIN alice password\r\n")
    raw.until_tagged(b"a1")
    raw.send(b"a2 APPEND %s {100000+}\r\n" % box.encode() + b"partial" * 1000)
    raw.send(b"")
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    proxy.wait_connections(0)
    conn = peers.imap_login(USER)
    assert conn.select(box, readonly=True)[1] == [b"0"]  # nothing half-appended
    conn.logout()
    conn = client(proxy)  # the proxy still serves
    conn.logout()


def test_idle_sees_a_message_delivered_through_postfix(proxy: ProxyThread, peers: Peers) -> None:
    subject = f"idle {uuid.uuid4().hex}"
    raw = RawClient(proxy.port)
    raw.line()
    raw.send(b"a1 LOGIN bob password\r\na2 SELECT INBOX\r\n")
    raw.until_tagged(b"a2")
    raw.send(b"a3 IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "sender@example.org", "bob@mail.test", subject
    msg.set_content("delivered while idling\n")
    with smtplib.SMTP("127.0.0.1", peers.smtp_port, timeout=10) as smtp:
        smtp.send_message(msg)
    deadline = time.monotonic() + 30
    while True:  # other tests may deliver to bob too: stop at the EXISTS that brings our subject
        line = raw.line()  # blocks on the socket, with its timeout
        assert time.monotonic() < deadline
        if not line.endswith(b"EXISTS\r\n"):
            continue
        raw.send(b"DONE\r\n")
        raw.until_tagged(b"a3")
        count = int(line.split()[1])
        raw.send(b"a4 FETCH %d (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n" % count)
        if any(subject.encode() in part for part in raw.until_tagged(b"a4")):
            break
        raw.send(b"a3 IDLE\r\n")
        assert raw.line().startswith(b"+ ")
    raw.send(b"a5 LOGOUT\r\n")
    raw.until_tagged(b"a5")
    raw.close()


def test_shutdown_says_bye(make_proxy: Callable[..., ProxyThread]) -> None:
    proxy = make_proxy()
    raw = RawClient(proxy.port)
    raw.line()
    raw.send(b"a1 LOGIN alice password\r\na2 SELECT INBOX\r\n")
    raw.until_tagged(b"a2")
    proxy.call(proxy.proxy.shutdown(5))
    assert raw.line().startswith(b"* BYE")
    raw.close()


# ------------------------------------------------------------------------------------------- TLS


def test_logindisabled_until_starttls(make_proxy: Callable[..., ProxyThread], tls_ca: TlsFiles) -> None:
    ctx = tls_ca.server_context()
    proxy = make_proxy(allow_plaintext_auth=False, ssl_context_factory=lambda: ctx)
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    assert "LOGINDISABLED" in conn.capabilities and "STARTTLS" in conn.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        conn.login(USER, PASSWORD)
    conn.starttls(tls_ca.client_context())
    assert "LOGINDISABLED" not in conn.capabilities and "STARTTLS" not in conn.capabilities
    assert conn.login(USER, PASSWORD)[0] == "OK"
    assert conn.select("INBOX")[0] == "OK"
    conn.logout()


def test_implicit_tls_listener_and_tls_upstream(
    make_proxy: Callable[..., ProxyThread], peers: Peers, tls_ca: TlsFiles
) -> None:
    ctx = tls_ca.server_context()
    for upstream in (
        UpstreamIMAP(host="127.0.0.1", port=peers.imaps_port, tls="tls", ca_file=str(peers.cert), timeout=60),
        UpstreamIMAP(host="127.0.0.1", port=peers.imap_port, tls="starttls", ca_file=str(peers.cert),
                     timeout=60),
    ):
        proxy = make_proxy(listen=[], tls_listen=["127.0.0.1:0"], allow_plaintext_auth=False,
                           ssl_context_factory=lambda: ctx, upstream=upstream)
        conn = imaplib.IMAP4_SSL("127.0.0.1", proxy.tls_port, ssl_context=tls_ca.client_context(), timeout=60)
        assert "LOGINDISABLED" not in conn.capabilities
        assert conn.login(USER, PASSWORD)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()


def test_upstream_certificate_is_verified(make_proxy: Callable[..., ProxyThread], peers: Peers,
                                          tls_ca: TlsFiles) -> None:
    # The peers' certificate is not signed by this CA: the upstream TLS handshake must fail.
    upstream = UpstreamIMAP(host="127.0.0.1", port=peers.imaps_port, tls="tls", ca_file=str(tls_ca.ca_path))
    proxy = make_proxy(upstream=upstream)
    conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=60)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        conn.login(USER, PASSWORD)
    conn.logout()


# ------------------------------------------------------------------------------------------ curl


def test_curl_imap_and_imaps(make_proxy: Callable[..., ProxyThread], peers: Peers, box: str,
                             tls_ca: TlsFiles) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: run tests/peers/install.sh (or make test)", pytrace=False)
    append_straight(peers, box, message("via curl", b"curl body line\r\n"))
    ctx = tls_ca.server_context()
    proxy = make_proxy(tls_listen=["127.0.0.1:0"], ssl_context_factory=lambda: ctx)
    for url, extra in (
        (f"imap://127.0.0.1:{proxy.port}/{box};UID=1", []),
        (f"imaps://127.0.0.1:{proxy.tls_port}/{box};UID=1", ["--cacert", str(tls_ca.ca_path)]),
        (f"imap://127.0.0.1:{proxy.port}/{box};UID=1", ["--ssl-reqd", "--cacert", str(tls_ca.ca_path)]),
    ):
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "-u", f"{USER}:{PASSWORD}", *extra, url],
                             capture_output=True, timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        assert b"Subject: via curl" in out.stdout and b"curl body line" in out.stdout


def test_capability_rewrite_table() -> None:
    assert capability.rewrite(b"* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE AUTH=PLAIN STARTTLS\r\n") == (
        b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    )
    assert capability.rewrite(b"a OK [CAPABILITY IMAP4rev1 UNAUTHENTICATE MOVE] Logged in\r\n") == (
        b"a OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n"
    )
    assert capability.rewrite(b"* 1 FETCH (FLAGS ())\r\n") == b"* 1 FETCH (FLAGS ())\r\n"
    assert capability.preauth(tls_active=False, starttls_available=True, plaintext_ok=False) == (
        b"IMAP4rev1 LITERAL+ ID IDLE STARTTLS LOGINDISABLED"
    )
    assert capability.preauth(tls_active=True, starttls_available=True, plaintext_ok=False) == (
        b"IMAP4rev1 LITERAL+ ID IDLE SASL-IR AUTH=PLAIN"
    )


# --------------------------------------------------------------------------------------- watcher


def _rules_pipeline() -> Pipeline:
    return Pipeline(RulesClassifier(), fallback=RulesClassifier(), budget=5)


def _deliver(peers: Peers, user: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", peers.smtp_port, timeout=10) as smtp:
        smtp.sendmail("sender@example.org", [peers.address(user)], raw)


def _wait_for_keyword(raw_client: RawClient, subject: str, keyword: bytes, timeout: float = 30
                      ) -> list[bytes]:
    """IDLE until a FETCH shows ``keyword`` on the message with ``subject``; return its flags line."""
    deadline = time.monotonic() + timeout
    tag = 0
    while time.monotonic() < deadline:
        tag += 1
        t = b"w%d" % tag
        raw_client.send(t + b" UID SEARCH SUBJECT " + quote(subject) + b" KEYWORD " + keyword + b"\r\n")
        lines = raw_client.until_tagged(t)
        uids = [x for line in lines if line.startswith(b"* SEARCH") for x in line.split()[2:]]
        if uids:
            raw_client.send(t + b"f UID FETCH " + uids[0] + b" (FLAGS)\r\n")
            return raw_client.until_tagged(t + b"f")
        raw_client.send(t + b"i IDLE\r\n")
        assert raw_client.line().startswith(b"+ ")
        while not raw_client.line().startswith(b"* "):  # any change (new mail, flags): look again
            pass
        raw_client.send(b"DONE\r\n")
        raw_client.until_tagged(t + b"i")
    pytest.fail(f"no {keyword!r} on {subject!r} after {timeout} s")


@pytest.fixture
def watching_proxy(make_proxy: Callable[..., ProxyThread], tmp_path: Path) -> ProxyThread:
    async def open_store() -> Store:
        return await Store.open(f"sqlite+aiosqlite:///{tmp_path}/gw.db")

    # The watcher may start after a message just delivered: it looks at the newest ones it has not seen.
    return make_proxy(watch=True, store_factory=open_store, pipeline=_rules_pipeline(), first_scan=50)


def test_watcher_writes_verdict_keywords_and_records_feedback(
    watching_proxy: ProxyThread, peers: Peers
) -> None:
    proxy = watching_proxy
    store: Store = proxy.store
    user = "carol" if "carol" in peers.users else "bob"
    subject = f"Weekly digest {uuid.uuid4().hex}"
    raw_msg = message(subject, b"Our newsletter this week. View it in your browser. Unsubscribe here.\r\n",
                      List_Unsubscribe="<mailto:unsubscribe@news.example.org>", Precedence="bulk")
    expected = keywords_for(record_from(proxy.call(_rules_pipeline().analyse(extract_facts(raw_msg))),
                                        extract_facts(raw_msg), user, Settings().policy))
    assert "$gw_newsletter" in expected

    raw_client = RawClient(proxy.port)
    raw_client.line()
    raw_client.send(b"a1 LOGIN %s password\r\na2 SELECT INBOX\r\n" % user.encode())
    raw_client.until_tagged(b"a2")
    _deliver(peers, user, raw_msg)
    flags_line = _wait_for_keyword(raw_client, subject, b"$gw_newsletter")[0]
    flags = set(re.search(rb"FLAGS \(([^)]*)\)", flags_line).group(1).decode().split())  # type: ignore[union-attr]
    assert set(expected) <= flags and "\\Seen" not in flags  # BODY.PEEK[] left \Seen alone

    message_id = extract_facts(raw_msg).message_id
    records = proxy.call(store.find_by_message_id(message_id))
    assert len(records) == 1 and records[0].source == "imap" and records[0].category == "newsletter"
    uid = int(re.search(rb"UID (\d+)", flags_line).group(1))  # type: ignore[union-attr]

    # The user says "not junk": the watcher sees the flag change and records feedback.
    raw_client.send(b"s1 UID STORE %d +FLAGS ($NotJunk)\r\n" % uid)
    raw_client.until_tagged(b"s1")
    deadline = time.monotonic() + 30
    while (records[0].id, "not_junk") not in proxy.call(store.feedback_for(user)):
        assert time.monotonic() < deadline, "no feedback recorded"
        raw_client.send(b"n1 NOOP\r\n")  # a bounded poll of the store; the watcher is event-driven
        raw_client.until_tagged(b"n1")
    raw_client.send(b"z LOGOUT\r\n")
    raw_client.until_tagged(b"z")
    raw_client.close()


def test_watcher_reuses_the_verdict_recorded_by_the_smtp_path(
    watching_proxy: ProxyThread, peers: Peers
) -> None:
    proxy = watching_proxy
    user = "carol" if "carol" in peers.users else "bob"
    subject = f"Plain note {uuid.uuid4().hex}"
    gw_id = new_id()
    raw_msg = message(subject, b"see you tomorrow\r\n", X_Gatewayd_Id=gw_id)
    # As the SMTP path would have recorded it: rules alone would never call this spam.
    proxy.call(proxy.store.record_messages([MessageRecord(id=gw_id, message_id="", accounts=[user],
                                                          is_spam=True, spam_score=0.97, subject=subject)]))
    raw_client = RawClient(proxy.port)
    raw_client.line()
    raw_client.send(b"a1 LOGIN %s password\r\na2 SELECT INBOX\r\n" % user.encode())
    raw_client.until_tagged(b"a2")
    _deliver(peers, user, raw_msg)
    flags_line = _wait_for_keyword(raw_client, subject, b"$Junk")[0]
    assert b"$Junk" in flags_line
    raw_client.close()


SPAM_BODY = (b"CONGRATULATIONS dear friend!!! You have won the LOTTERY jackpot of $1,000,000.00!!! "
             b"This is 100% free money, act now, limited time. Click here to claim your cash bonus. "
             b"Cheap viagra too!\r\n")


def _purge(peers: Peers, user: str, *mailboxes: str) -> None:
    conn = peers.imap_login(user)
    try:
        for name in mailboxes:
            typ, data = conn.select(name)
            assert typ == "OK", data
            if int(data[0] or b"0") > 0:
                conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
                conn.expunge()
            conn.close()
    finally:
        conn.logout()


def _find(peers: Peers, user: str, mailbox: str, token: str) -> tuple[int, int, set[str]] | None:
    """``(uidvalidity, uid, flags)`` of the message whose subject holds ``token``, straight from Dovecot."""
    conn = peers.imap_login(user)
    try:
        typ, data = conn.select(mailbox, readonly=True)
        assert typ == "OK", data
        uidvalidity = int(conn.response("UIDVALIDITY")[1][0])  # type: ignore[index, arg-type]
        typ, data = conn.uid("SEARCH", "SUBJECT", token)
        assert typ == "OK", data
        uids = data[0].split() if data and data[0] else []
        if not uids:
            return None
        typ, data = conn.uid("FETCH", uids[0], "(FLAGS)")
        flags = re.search(rb"FLAGS \(([^)]*)\)", data[0]).group(1).decode().split()  # type: ignore[union-attr, arg-type]
        return uidvalidity, int(uids[0]), set(flags)
    finally:
        conn.logout()


def test_move_junk_moves_spam_and_a_move_back_is_feedback(
    make_proxy: Callable[..., ProxyThread], peers: Peers, tmp_path: Path
) -> None:
    user = "carol"
    _purge(peers, user, "INBOX", "Junk")

    async def open_store() -> Store:
        return await Store.open(f"sqlite+aiosqlite:///{tmp_path}/gw.db")

    proxy = make_proxy(watch=True, move_junk=True, store_factory=open_store, pipeline=_rules_pipeline(),
                       first_scan=50)
    store: Store = proxy.store
    token = uuid.uuid4().hex
    raw_msg = message(f"YOU HAVE WON!!! CLAIM YOUR PRIZE NOW {token}", SPAM_BODY)
    facts = extract_facts(raw_msg)
    assert record_from(proxy.call(_rules_pipeline().analyse(facts)), facts, user, Settings().policy).is_spam

    session = RawClient(proxy.port)  # the user's client: its login starts the watcher
    session.line()
    session.send(b"a1 LOGIN %s password\r\na2 SELECT INBOX\r\n" % user.encode())
    session.until_tagged(b"a2")
    feedback = 'gatewayd_imap_feedback_total', {"kind": "moved_out_of_junk"}
    feedback_before = REGISTRY.get_sample_value(*feedback) or 0.0
    _deliver(peers, user, raw_msg)

    deadline = time.monotonic() + 30
    while (in_junk := _find(peers, user, "Junk", token)) is None:
        assert time.monotonic() < deadline, "the spam never reached Junk"
        time.sleep(0.1)  # a bounded poll of Dovecot's mailbox
    junk_uidvalidity, junk_uid, flags = in_junk
    assert "$Junk" in flags and "\\Seen" not in flags
    assert _find(peers, user, "INBOX", token) is None
    records = proxy.call(store.find_by_message_id(facts.message_id))
    assert len(records) == 1 and records[0].is_spam
    gw_id = records[0].id
    entry = proxy.call(store.get_mailbox_entry(user, "Junk", junk_uidvalidity, junk_uid))
    assert entry is not None and entry.message == gw_id and "$Junk" in entry.keywords

    # The user disagrees and moves it back to INBOX, straight at Dovecot.
    conn = peers.imap_login(user)
    assert conn.select("Junk")[0] == "OK"
    assert conn.uid("MOVE", str(junk_uid), "INBOX")[0] == "OK"
    conn.logout()
    deadline = time.monotonic() + 30
    while (gw_id, "moved_out_of_junk") not in proxy.call(store.feedback_for(user)):
        assert time.monotonic() < deadline, "no moved_out_of_junk feedback recorded"
        time.sleep(0.1)  # a bounded poll of the store
    assert (REGISTRY.get_sample_value(*feedback) or 0.0) == feedback_before + 1
    # The watcher has made its decision on the returned message (feedback comes before any move): it stays.
    session.send(b"n1 NOOP\r\n")
    session.until_tagged(b"n1")
    assert _find(peers, user, "INBOX", token) is not None
    assert _find(peers, user, "Junk", token) is None
    assert [k for _, k in proxy.call(store.feedback_for(user))] == ["moved_out_of_junk"]
    session.send(b"z LOGOUT\r\n")
    session.until_tagged(b"z")
    session.close()


@pytest.mark.parametrize("tls", ["none", "starttls", "tls"])
def test_master_user_watches_without_a_client(make_proxy: Callable[..., ProxyThread], peers: Peers,
                                              tmp_path: Path, tls: str) -> None:
    if peers.master_user is None:
        pytest.fail("the peers have no Dovecot master user (tests/peers/start.sh writes master-users)")
    user = "carol" if "carol" in peers.users else "bob"

    async def open_store() -> Store:
        return await Store.open(f"sqlite+aiosqlite:///{tmp_path}/gw.db")

    master = MasterUser(enabled=True, user=peers.master_user, password=peers.master_password,
                        separator=peers.master_separator, users=[user])
    upstream = UpstreamIMAP(host="127.0.0.1", port=peers.imaps_port if tls == "tls" else peers.imap_port,
                            tls=tls, ca_file=str(peers.cert), timeout=60)  # the watcher's TLS too
    make_proxy(watch=True, master_user=master, store_factory=open_store, pipeline=_rules_pipeline(),
               first_scan=50, upstream=upstream)
    subject = f"Digest without a client {uuid.uuid4().hex}"
    raw_msg = message(subject, b"This week's newsletter. Unsubscribe here.\r\n",
                      List_Unsubscribe="<mailto:unsubscribe@news.example.org>", Precedence="bulk")
    straight = RawClient(peers.imap_port)  # straight to Dovecot: no proxy session at all
    straight.line()
    straight.send(b"a1 LOGIN %s password\r\na2 SELECT INBOX\r\n" % user.encode())
    straight.until_tagged(b"a2")
    _deliver(peers, user, raw_msg)
    assert b"$gw_newsletter" in _wait_for_keyword(straight, subject, b"$gw_newsletter")[0]
    straight.close()


def test_mail_through_the_smtp_path_shows_its_verdict_as_keywords_through_the_daemon(
    peers: Peers, gatewayd_factory: Any,
) -> None:
    """The whole gateway: SMTP into gatewayd -> Postfix -> Dovecot; read through gatewayd's IMAP listener."""
    user = "carol" if "carol" in peers.users else "bob"
    imap_port = free_port()
    gw = gatewayd_factory(
        peers.smtp_port,
        imap={"listen": [f"127.0.0.1:{imap_port}"], "allow_plaintext_auth": True,
              "account_domain": peers.domain},
        imap__upstream={"host": "127.0.0.1", "port": peers.imap_port, "timeout": 60.0},
    ).start()
    subject = f"Weekly news {uuid.uuid4().hex}"
    raw_msg = message(subject, b"This week's newsletter. View it in your browser. Unsubscribe here.\r\n",
                      List_Unsubscribe="<mailto:unsubscribe@news.example.org>", Precedence="bulk")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as smtp:
        smtp.sendmail("sender@example.org", [peers.address(user)], raw_msg)
    delivered = peers.wait_for_message(user, subject)
    assert b"X-Gatewayd-Category: newsletter" in delivered

    client_conn = RawClient(imap_port)
    client_conn.line()
    client_conn.send(b"a1 LOGIN %s password\r\na2 SELECT INBOX\r\n" % user.encode())
    client_conn.until_tagged(b"a2")
    assert b"$gw_newsletter" in _wait_for_keyword(client_conn, subject, b"$gw_newsletter")[0]
    client_conn.send(b"z LOGOUT\r\n")
    client_conn.until_tagged(b"z")
    client_conn.close()
    assert gw.metric("gatewayd_imap_messages_analysed_total", how="reused") >= 1

    async def owners() -> tuple[list[str], list[str]]:
        store = await Store.open(f"sqlite+aiosqlite:///{gw.root / 'gatewayd.db'}", migrate=False)
        try:
            mine = await store.query_messages(peers.address(user), limit=500)
            bare = await store.query_messages(user, limit=500)
            return [r.subject for r in mine], [r.subject for r in bare]
        finally:
            await store.close()

    # The IMAP login "carol" and the SMTP recipient carol@mail.test are one account, not two.
    mine, bare = asyncio.run(owners())
    assert subject in mine and subject not in bare


@pytest.mark.parametrize("login,domain,account", [
    ("Alice", "mail.test", "alice@mail.test"),
    ("alice@Example.org", "mail.test", "alice@example.org"),
    ("alice", "", "alice"),
])
def test_logins_name_their_account(login: str, domain: str, account: str) -> None:
    assert account_of(login, domain) == account


@pytest.mark.parametrize("line,junk", [
    (b'(\\HasNoChildren \\Junk) "." Junk', "Junk"),
    (b'LIST (\\Junk) "/" "Spam mail"', "Spam mail"),
    (b'(\\Junk) NIL "Quote \\"q\\""', 'Quote "q"'),
    (b'(\\HasNoChildren \\JunkLike) "." Other', None),
    (b'(\\Sent) "." Sent', None),
    (b"List completed", None),
])
def test_junk_mailbox_from_list_replies(line: bytes, junk: str | None) -> None:
    assert junk_mailbox([b'() "." INBOX', line]) == junk
