"""The SMTP gateway against real peers: clients no one here wrote (swaks, smtplib) -> gatewayd (a real
process) -> Postfix -> Dovecot, or -> smtp-sink where the test needs an upstream that misbehaves."""

from __future__ import annotations

import asyncio
import base64
import email
import email.header
import email.policy
import smtplib
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Peers, free_port
from gatewayd_proc import Gatewayd

from gatewayd.store.facade import Store

pytestmark = pytest.mark.peers


def _subject() -> str:
    return f"gw-test {uuid.uuid4().hex[:12]}"


def _send(
    gw: Gatewayd,
    subject: str,
    body: str = "Hello Alice, see you tomorrow.",
    *,
    rcpt: str = "alice@mail.test",
    sender: str = "bob@mail.test",
    extra_headers: str = "",
) -> str:
    msg = (
        f"From: Bob <{sender}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mail.test>\r\nDate: Wed, 18 Nov 2026 10:00:00 +0000\r\n"
        f"{extra_headers}\r\n{body}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.sendmail(sender, [rcpt], msg.encode())
    return msg


def _headers(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _records(gw: Gatewayd, message_id: str) -> list[Any]:
    async def find() -> list[Any]:
        store = await Store.open(f"sqlite+aiosqlite:///{gw.root / 'gatewayd.db'}", migrate=False)
        try:
            return await store.find_by_message_id(message_id)
        finally:
            await store.close()

    return asyncio.run(find())


def test_swaks_through_gatewayd_into_dovecot_with_verdict_headers(
    peers: Peers, gatewayd_factory: Any
) -> None:
    gw = gatewayd_factory(peers.smtp_port).start()
    subject = _subject()
    out = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{gw.smtp_port}",
            "--from",
            "bob@mail.test",
            "--to",
            "alice@mail.test",
            "--header",
            f"Subject: {subject}",
            "--header",
            "X-Spam-Flag: YES",
            "--header",
            "X-Gatewayd-Category: x",
            "--body",
            "Hi Alice,\n\nPlease send the report by Friday.\n\n-- \nBob",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 OK queued as" in out.stdout
    raw = peers.wait_for_message("alice", subject)
    msg = _headers(raw)
    gw_id = msg["X-Gatewayd-Id"]
    assert gw_id and len(gw_id) == 26
    assert msg.get_all("X-Spam-Flag") == ["NO"]  # the sender's spoofed YES is gone
    assert msg.get_all("X-Gatewayd-Category") == ["personal"]
    assert msg["X-Spam-Score"] is not None and msg["X-Gatewayd-Priority"] is not None
    assert "Please send the report by Friday." in str(msg["X-Gatewayd-Summary"])
    assert msg["X-Gatewayd-Phishing"].startswith("NO")
    assert f"id {gw_id}" in " ".join(msg.get_all("Received"))

    message_id = msg["Message-ID"].strip("<>")
    [record] = _records(gw, message_id)
    assert record.id == gw_id
    assert record.subject == subject and record.accounts == ["alice@mail.test"]
    gw.wait_until(
        lambda: _records(gw, message_id)[0].delivery_state == "delivered", what="delivery state recorded"
    )
    assert gw.metric("gatewayd_smtp_messages_total", result="accepted") == 1


def test_smtplib_utf8_and_8bit_message_arrives_intact(peers: Peers, gatewayd_factory: Any) -> None:
    gw = gatewayd_factory(peers.smtp_port).start()
    subject = _subject()
    body = "Grüße aus Köln — 東京で会いましょう。".encode()
    msg = (
        f"From: bob@mail.test\r\nTo: alice@mail.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("8bitmime") and smtp.has_extn("smtputf8") and smtp.has_extn("pipelining")
        assert not smtp.has_extn("auth")  # the relay listener offers no AUTH
        smtp.sendmail("bob@mail.test", ["alice@mail.test"], msg, mail_options=["BODY=8BITMIME"])
    raw = peers.wait_for_message("alice", subject)
    assert body in raw


def test_upstream_down_then_up_all_50_arrive(smtp_sink: Any, gatewayd_factory: Any) -> None:
    port = free_port()  # nothing listens here yet
    gw = gatewayd_factory(port).start()
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        for i in range(50):
            smtp.sendmail("bob@mail.test", ["alice@mail.test"], f"Subject: queued {i}\r\n\r\nbody {i}\r\n")
    gw.wait_until(lambda: gw.metric("gatewayd_upstream_errors_total") > 0, what="a failed delivery attempt")
    assert gw.metric("gatewayd_spool_messages") == 50
    listing = gw.cli("queue", "list", "--json")
    assert len(__import__("json").loads(listing.stdout)["messages"]) == 50

    sink = smtp_sink(port=port, dump=True)
    gw.cli("queue", "flush")
    got = sink.wait_for_messages(50, timeout=60)
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\n")[0] for m in got) == sorted(
        f"queued {i}".encode() for i in range(50)
    )
    gw.wait_until(lambda: gw.metric("gatewayd_spool_messages") == 0, what="empty spool")


def test_kill_9_with_spooled_mail_then_restart_delivers_all(smtp_sink: Any, gatewayd_factory: Any) -> None:
    port = free_port()
    gw = gatewayd_factory(port).start()
    ids = []
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        for i in range(20):
            smtp.mail("bob@mail.test")
            smtp.rcpt("alice@mail.test")
            code, reply = smtp.data(
                f"Subject: crash {i}\r\nMessage-ID: <crash-{i}@t>\r\n\r\nbody\r\n".encode()
            )
            assert code == 250
            ids.append(reply.decode().rsplit(" ", 1)[1])
    gw.kill()  # SIGKILL right after the 250s: nothing flushed on the way out

    sink = smtp_sink(port=port, dump=True)
    gw.start()
    got = sink.wait_for_messages(20, timeout=60)
    delivered_ids = {email.message_from_bytes(m.data)["X-Gatewayd-Id"] for m in got}
    assert set(ids) <= delivered_ids
    gw.wait_until(lambda: all(_records(gw, f"crash-{i}@t") for i in range(20)), what="all metadata recorded")


def test_permanent_failure_bounces_to_sender(peers: Peers, gatewayd_factory: Any) -> None:
    gw = gatewayd_factory(peers.smtp_port).start()
    subject = _subject()
    _send(gw, subject, rcpt="nobody@mail.test", sender="alice@mail.test")  # Postfix: 550 unknown user
    dsn = _headers(
        peers.wait_for_message("alice", lambda raw: b"Undelivered Mail" in raw and subject.encode() in raw)
    )
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    text = dsn.as_string()
    assert "Final-Recipient: rfc822; nobody@mail.test" in text
    assert "Status: 5." in text
    assert gw.metric("gatewayd_delivery_recipients_total", result="bounced") == 1


def test_soft_failure_is_retried_not_bounced(smtp_sink: Any, gatewayd_factory: Any) -> None:
    sink = smtp_sink(soft_reject="RCPT")
    gw = gatewayd_factory(sink.port).start()
    _send(gw, "soft")
    gw.wait_until(
        lambda: gw.metric("gatewayd_delivery_recipients_total", result="deferred") >= 2,
        what="two deferred attempts",
    )
    assert gw.metric("gatewayd_delivery_recipients_total", result="bounced") == 0
    assert gw.metric("gatewayd_spool_messages") == 1


def test_oversize_is_refused_with_552(smtp_sink: Any, gatewayd_factory: Any) -> None:
    sink = smtp_sink(dump=True)
    gw = gatewayd_factory(sink.port, smtp={"max_message_size": 10_000}).start()
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 0 + (b"y" * 76 + b"\r\n") * 200
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:  # SIZE= announced in MAIL FROM
            smtp.sendmail("bob@mail.test", ["alice@mail.test"], big)
        assert declared.value.smtp_code == 552
    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as sock:  # no SIZE: caught at DATA
        f = sock.makefile("rwb")
        f.readline()
        for line in (b"EHLO t", b"MAIL FROM:<bob@mail.test>", b"RCPT TO:<alice@mail.test>", b"DATA"):
            f.write(line + b"\r\n")
            f.flush()
            while f.readline()[3:4] == b"-":
                pass
        f.write(big + b".\r\n")
        f.flush()
        assert f.readline().startswith(b"552")
        f.write(b"QUIT\r\n")
        f.flush()
    _send(gw, "small after big")  # the listener is fine afterwards
    assert len(sink.wait_for_messages(1)) == 1


@pytest.mark.parametrize(
    "name,data",
    [
        (
            "malformed_mime",
            b'Subject: broken\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
            b"Content-Type: text/plain; charset=bogus-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"!!!not base64!!!\r\n--zz",
        ),
        ("eight_bit_garbage", b"Subject: \xff\xfe\xfa garbage\r\n\r\n\x80\x81\x82\xc3\x28 invalid utf-8\r\n"),
        ("bare_lf", b"Subject: bare lf\nX-Test: 1\n\nline one\nline two\n"),
        ("nul_bytes", b"Subject: nul\r\n\r\nbefore\x00after\r\n"),
        ("no_headers_at_all", b"just a body line, no header block\r\n"),
        (
            "header_injection",
            b"Subject: hi\r\nX-Gatewayd-Id: FAKE\r\nX-Spam-Score: -100\r\n\t folded spoof\r\n"
            b"X-Spam-Status: No\r\n\r\nbody\r\n",
        ),
    ],
)
def test_bad_input_is_relayed_or_refused_never_lost(
    name: str, data: bytes, smtp_sink: Any, gatewayd_factory: Any
) -> None:
    sink = smtp_sink(dump=True)
    gw = gatewayd_factory(sink.port).start()
    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220")
        for line in (b"EHLO t", b"MAIL FROM:<bob@mail.test>", b"RCPT TO:<alice@mail.test>", b"DATA"):
            f.write(line + b"\r\n")
            f.flush()
            while (reply := f.readline())[3:4] == b"-":
                pass
            assert reply[:1] in (b"2", b"3"), reply
        f.write(data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n")  # CRLF.CRLF ends DATA
        f.flush()
        reply = f.readline()
        assert reply.startswith(b"250"), reply
        f.write(b"QUIT\r\n")
        f.flush()
    [got] = sink.wait_for_messages(1)
    head = got.data.split(b"\n\n", 1)[0]
    assert head.count(b"X-Gatewayd-Id:") == 1 and b"FAKE" not in head
    assert b"X-Spam-Score: -100" not in head and b"folded spoof" not in head
    assert head.count(b"X-Spam-Status:") == 1
    if name == "bare_lf":
        assert gw.metric("gatewayd_bad_input_total", protocol="smtp", kind="bare_newline") == 1
    if name == "nul_bytes":
        assert b"before\x00after" in got.data
    assert gw.proc is not None and gw.proc.poll() is None


def _auth_gateway(peers: Peers, gatewayd_factory: Any, **smtp: Any) -> Gatewayd:
    port = free_port()
    gw = gatewayd_factory(
        peers.smtp_port,
        smtp={
            "submission_listen": [f"127.0.0.1:{port}"],
            "allow_plaintext_auth": True,
            "auth_failure_delay": 0.0,
            "auth_max_failures": 3,
            **smtp,
        },
        smtp__upstream={"auth_port": peers.submission_port},
    ).start()
    gw.submission_port = port  # type: ignore[attr-defined]
    return gw


def test_submission_auth_passes_through_and_wrong_password_is_throttled(
    peers: Peers, gatewayd_factory: Any
) -> None:
    gw = _auth_gateway(peers, gatewayd_factory)
    port = gw.submission_port  # type: ignore[attr-defined]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as no_auth:
            smtp.sendmail("alice@mail.test", ["bob@mail.test"], "Subject: x\r\n\r\nx\r\n")
        assert no_auth.value.smtp_code == 530
    subject = _subject()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.login("alice", "password")
        smtp.sendmail("alice@mail.test", ["bob@mail.test"], f"Subject: {subject}\r\n\r\nsent with AUTH\r\n")
    raw = peers.wait_for_message("bob", subject)
    assert b"with ESMTPA id" in raw
    wrong = base64.b64encode(b"\0alice\0wrong-password").decode()
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHBhc3N3b3Jk")  # right password, but throttled now
        assert code == 421
    assert gw.metric("gatewayd_smtp_auth_total", result="failed") == 3
    assert gw.metric("gatewayd_smtp_auth_total", result="throttled") == 1
    assert "wrong-password" not in gw.logs() and "password" not in gw.logs().lower().replace("event=", "")


def test_submission_requires_starttls_before_auth(peers: Peers, gatewayd_factory: Any, tls_ca: Any) -> None:
    port = free_port()
    gatewayd_factory(
        peers.smtp_port,
        smtp={"submission_listen": [f"127.0.0.1:{port}"]},
        smtp__upstream={"auth_port": peers.submission_port},
        tls={"cert": str(tls_ca.cert_path), "key": str(tls_ca.key_path)},
    ).start()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth") and smtp.has_extn("starttls")
        code, _ = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHBhc3N3b3Jk")
        assert code == 538
        smtp.starttls(context=tls_ca.client_context())
        smtp.ehlo()
        assert smtp.has_extn("auth")
        smtp.login("alice", "password")


def test_quarantine_then_release_delivers(smtp_sink: Any, gatewayd_factory: Any) -> None:
    sink = smtp_sink(dump=True)
    gw = gatewayd_factory(sink.port, policy={"spam": "quarantine", "spam_threshold": 0.0}).start()
    _send(gw, "quarantined one")
    gw.wait_until(lambda: gw.metric("gatewayd_spool_held_messages") == 1, what="message in quarantine")
    rows = __import__("json").loads(gw.cli("queue", "list", "--json").stdout)["messages"]
    assert [r["state"] for r in rows] == ["quarantine"]
    assert sink.messages() == []
    gw.cli("queue", "release", rows[0]["id"])
    [got] = sink.wait_for_messages(1)
    assert b"quarantined one" in got.data


def test_reject_policy_answers_550_at_data(smtp_sink: Any, gatewayd_factory: Any) -> None:
    sink = smtp_sink(dump=True)
    gw = gatewayd_factory(sink.port, policy={"spam": "reject", "spam_threshold": 0.0}).start()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(gw, "rejected")
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    assert gw.metric("gatewayd_smtp_messages_total", result="rejected") == 1


def test_queue_hold_delete_and_offline_list(gatewayd_factory: Any) -> None:
    gw = gatewayd_factory(free_port()).start()
    for i in range(2):
        _send(gw, f"to hold {i}")
    rows = __import__("json").loads(gw.cli("queue", "list", "--json").stdout)["messages"]
    first, second = rows[0]["id"], rows[1]["id"]
    gw.cli("queue", "hold", first)
    gw.cli("queue", "delete", second)
    assert gw.cli("queue", "delete", "NOSUCHID", check=False).returncode == 1
    assert gw.stop() == 0
    offline = __import__("json").loads(
        gw.cli("queue", "list", "--json").stdout
    )  # daemon down: reads the spool
    assert offline["offline"] is True
    assert [(r["id"], r["state"]) for r in offline["messages"]] == [(first, "hold")]


def test_sigterm_finishes_a_transaction_in_flight(smtp_sink: Any, gatewayd_factory: Any) -> None:
    sink = smtp_sink(dump=True)
    gw = gatewayd_factory(sink.port).start()
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("bob@mail.test")[0] == 250
        assert smtp.rcpt("alice@mail.test")[0] == 250
        assert gw.proc is not None
        gw.proc.terminate()
        gw.wait_until(lambda: "event=stopping" in gw.logs(), what="shutdown to begin")
        code, _ = smtp.data(b"Subject: in flight\r\n\r\nbody\r\n")
        assert code == 250
    assert gw.proc.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=5).close()
    sink_or_spool = sink.messages() or gw.start().cli("queue", "list", "--json").stdout
    assert sink_or_spool  # delivered before exit, or still safe in the spool


def test_metrics_pass_promtool(peers: Peers, gatewayd_factory: Any) -> None:
    gw = gatewayd_factory(peers.smtp_port).start()
    _send(gw, _subject())
    text = gw.metrics()
    for name in (
        "gatewayd_smtp_messages_total",
        "gatewayd_analysis_seconds_bucket",
        "gatewayd_delivery_seconds_bucket",
        "gatewayd_spool_messages",
        "gatewayd_spool_oldest_age_seconds",
        "gatewayd_upstream_errors_total",
        "gatewayd_smtp_auth_total",
        "gatewayd_analysis_fallbacks_total",
    ):
        assert name in text or name.removesuffix("_total") in text, name
    promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


def test_starttls_on_relay_listener_and_sighup_reload(
    smtp_sink: Any, gatewayd_factory: Any, tls_ca: Any, tmp_path: Path
) -> None:
    sink = smtp_sink(dump=True)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(Path(tls_ca.cert_path).read_bytes())
    key.write_bytes(Path(tls_ca.key_path).read_bytes())
    gw = gatewayd_factory(sink.port, tls={"cert": str(cert), "key": str(key)}).start()
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=tls_ca.client_context())
        smtp.sendmail("bob@mail.test", ["alice@mail.test"], "Subject: over tls\r\n\r\nx\r\n")
    [got] = sink.wait_for_messages(1)
    assert b"with ESMTPS id" in got.data
    assert gw.proc is not None
    gw.proc.send_signal(__import__("signal").SIGHUP)
    gw.wait_until(lambda: "event=tls_reloaded" in gw.logs(), what="TLS reload")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=tls_ca.client_context())
        assert smtp.noop()[0] == 250


def test_upstream_starttls_verifies_the_certificate(peers: Peers, gatewayd_factory: Any, tls_ca: Any) -> None:
    trusted = gatewayd_factory(
        peers.smtp_port, name="trusted", smtp__upstream={"tls": "starttls", "ca_file": str(peers.cert)}
    ).start()
    subject = _subject()
    _send(trusted, subject)
    raw = peers.wait_for_message("alice", subject)
    assert b"(Postfix) with ESMTPS id" in raw  # the hop from gatewayd to Postfix was encrypted

    untrusted = gatewayd_factory(
        peers.smtp_port,
        name="untrusted",  # a CA that did not sign Postfix's cert
        smtp__upstream={"tls": "starttls", "ca_file": str(tls_ca.ca_path)},
    ).start()
    _send(untrusted, _subject())
    untrusted.wait_until(
        lambda: untrusted.metric("gatewayd_upstream_errors_total") >= 1, what="a TLS failure"
    )
    assert untrusted.metric("gatewayd_delivery_recipients_total", result="delivered") == 0
    assert untrusted.metric("gatewayd_spool_messages") == 1  # kept for a retry, not lost


def test_expired_message_is_bounced_after_max_age(gatewayd_factory: Any) -> None:
    gw = gatewayd_factory(
        free_port(), spool={"max_age": "1s", "retry_min": "0.2s", "retry_max": "0.2s"}
    ).start()
    _send(gw, "will expire", sender="carol@mail.test")
    gw.wait_until(
        lambda: gw.metric("gatewayd_delivery_recipients_total", result="bounced") == 1, what="expiry bounce"
    )
    rows = __import__("json").loads(gw.cli("queue", "list", "--json").stdout)["messages"]
    assert [(r["mail_from"], r["pending"]) for r in rows] == [
        ("", ["carol@mail.test"])
    ]  # only the DSN is left
