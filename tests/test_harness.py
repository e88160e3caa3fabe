"""The test harness itself works: real Postfix -> Dovecot delivery, smtp-sink in its modes, TLS files.

These tests use only the fixtures from conftest.py and never import gatewayd.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
import socket
import ssl
import subprocess
import threading
import uuid
from email.message import EmailMessage

import pytest
from conftest import Peers, SinkFactory, TlsFiles, free_port, port_answers


def _message(sender: str, rcpt: str, subject: str, body: str = "hello\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


@pytest.mark.peers
def test_swaks_through_postfix_lands_in_dovecot(peers: Peers) -> None:
    subject = f"harness {uuid.uuid4()}"
    out = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{peers.smtp_port}",
            "--from",
            "sender@example.org",
            "--to",
            peers.address("alice"),
            "--header",
            f"Subject: {subject}",
            "--body",
            "swaks body",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    raw = peers.wait_for_message("alice", subject)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Delivered-To"] == peers.address("alice")
    assert "swaks body" in msg.get_body().get_content()  # type: ignore[union-attr]


@pytest.mark.peers
def test_submission_auth_and_imaps_with_the_peers_cert(peers: Peers) -> None:
    subject = f"submission {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", peers.submission_port, timeout=10) as smtp:
        smtp.starttls(context=peers.ssl_context())
        smtp.login("bob", peers.users["bob"])
        smtp.send_message(_message(peers.address("bob"), peers.address("bob"), subject))
    # predicate form, and IMAPS verified against the peers' self-signed cert
    raw = peers.wait_for_message("bob", lambda m: subject.encode() in m)
    assert subject.encode() in raw
    conn = peers.imap_login("bob", tls=True)
    try:
        assert conn.select("INBOX")[0] == "OK"
    finally:
        conn.logout()


@pytest.mark.peers
def test_master_user_logs_in_as_a_user(peers: Peers) -> None:
    if peers.master_user is None:
        # Only when reusing peers that the reference recipe (/work/shared/peers) started.
        pytest.xfail("these peers were not started by tests/peers/start.sh and have no master user")
    conn = imaplib.IMAP4("127.0.0.1", peers.imap_port, timeout=10)
    try:
        typ, _ = conn.login(f"carol{peers.master_separator}{peers.master_user}", peers.master_password)
        assert typ == "OK"
    finally:
        conn.logout()
    conn = imaplib.IMAP4("127.0.0.1", peers.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(f"nosuchuser{peers.master_separator}{peers.master_user}", peers.master_password)
    finally:
        conn.shutdown()


@pytest.mark.peers
def test_purge_inbox_empties_it(peers: Peers) -> None:
    user = "carol" if "carol" in peers.users else "bob"  # carol: the user no other test reads
    subject = f"purge {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", peers.smtp_port, timeout=10) as smtp:
        smtp.send_message(_message("x@example.org", peers.address(user), subject))
    peers.wait_for_message(user, subject)
    peers.purge_inbox(user)
    assert peers.fetch_inbox(user) == []


def test_smtp_sink_accepts_and_dumps(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink(dump=True)
    msg = _message("a@example.org", "b@example.net", "to the sink", "line one\n.leading dot\n")
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
        refused = smtp.send_message(msg, to_addrs=["b@example.net", "c@example.net"])
    assert refused == {}
    (got,) = sink.wait_for_messages(1)
    assert got.mail_from == "a@example.org"
    assert got.rcpt_to == ["b@example.net", "c@example.net"]
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["Subject"] == "to the sink"
    assert b"\n.leading dot\n" in got.data  # dot-stuffing undone


def test_smtp_sink_hard_reject_gives_5xx(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink(hard_reject="RCPT")
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
            smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n")
    code, _ = exc.value.recipients["b@example.net"]
    assert 500 <= code < 600


def test_smtp_sink_soft_reject_at_end_of_data_gives_4xx(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink(soft_reject=".", soft_reply="451 4.3.0 try later")
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n")
    assert exc.value.smtp_code == 451


def test_smtp_sink_stop_and_come_back_on_the_same_port(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    sink.stop()
    assert not port_answers(sink.port)
    again = smtp_sink(port=sink.port)
    with smtplib.SMTP("127.0.0.1", again.port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250


def test_tls_ca_files_make_a_working_handshake(tls_ca: TlsFiles) -> None:
    server_ctx = tls_ca.server_context()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with tls_ca.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        t.join(5)
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            t = threading.Thread(target=lambda: _accept_tls(listener, server_ctx))
            t.start()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
            finally:
                t.join(5)


def _accept_tls(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = listener.accept()
    try:
        ctx.wrap_socket(conn, server_side=True).close()
    except (ssl.SSLError, OSError):
        conn.close()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        assert port_answers(port)
