"""Bad IMAP input is answered BAD, counted in gatewayd_bad_input_total, and the connection survives."""

from __future__ import annotations

from conftest import Peers
from imap_helpers import ProxyThread, RawClient, imap_settings
from prometheus_client import REGISTRY


def bad_input(kind: str) -> float:
    return REGISTRY.get_sample_value("gatewayd_bad_input_total", {"protocol": "imap", "kind": kind}) or 0.0


def test_bad_imap_input_is_counted(peers: Peers) -> None:
    proxy = ProxyThread(imap_settings(peers.imap_port))
    try:
        before = bad_input("bad_command"), bad_input("line_too_long")
        raw = RawClient(proxy.port)
        raw.line()
        for junk in (b"hello\r\n", b"a1 FROB\r\n", b"\x00\xff\xfe\r\n", b"a3 " + b"x" * 70_000 + b"\r\n"):
            raw.send(junk)
            assert b" BAD " in raw.line()
        raw.send(b"a4 NOOP\r\n")
        assert raw.line().startswith(b"a4 OK")
        raw.close()
        after = bad_input("bad_command"), bad_input("line_too_long")
        assert sum(after) - sum(before) == 4
    finally:
        proxy.stop()
