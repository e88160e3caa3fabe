"""mbsync (isync), a client no one here wrote, mirrors a mailbox identically through gatewayd and straight."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Peers
from imap_helpers import ProxyThread, imap_settings, populate

pytestmark = pytest.mark.peers

COUNT = 2000
_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)


def mbsync_config(path: Path, port: int, mailbox: str, maildir: Path) -> Path:
    path.write_text(
        f"IMAPAccount acct\nHost 127.0.0.1\nPort {port}\nUser alice\nPass password\nSSLType None\n"
        "AuthMechs LOGIN\nPipelineDepth 50\n\n"
        "IMAPStore far\nAccount acct\n\n"
        f"MaildirStore near\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n"
        f"Channel ch\nFar :far:\nNear :near:\nPatterns {mailbox}\nSync Pull\nCreate Near\n"
        f"SyncState {maildir}/.state/\n"
    )
    (maildir / ".state").mkdir(parents=True)
    return path


def run_mbsync(config: Path) -> None:
    out = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def maildir_contents(maildir: Path, mailbox: str) -> Counter[tuple[str, bytes]]:
    """Each message as (flags from the Maildir file name, exact bytes), as a multiset.

    mbsync adds an ``X-TUID`` header with a random value of its own to every message: that line is dropped.
    """
    files = [f for sub in ("cur", "new") for f in (maildir / mailbox / sub).iterdir()]
    return Counter((f.name.rpartition(":2,")[2], _TUID.sub(b"", f.read_bytes(), count=1)) for f in files)


@pytest.fixture(scope="module")
def big_box(peers: Peers) -> Iterator[str]:
    name = f"gwsync-{uuid.uuid4().hex[:12]}"
    conn = peers.imap_login("alice")
    assert conn.create(name)[0] == "OK"
    conn.logout()
    populate(peers.imap_port, "alice", peers.users["alice"], name, COUNT)
    yield name
    with contextlib.suppress(Exception):
        conn = peers.imap_login("alice")
        conn.delete(name)
        conn.logout()


def test_mbsync_through_gatewayd_equals_straight(peers: Peers, big_box: str, tmp_path: Path) -> None:
    if shutil.which("mbsync") is None:
        pytest.fail("mbsync is not installed: run tests/peers/install.sh (package isync)", pytrace=False)
    proxy = ProxyThread(imap_settings(peers.imap_port))
    try:
        straight, through = tmp_path / "straight", tmp_path / "through"
        run_mbsync(mbsync_config(tmp_path / "straight.rc", peers.imap_port, big_box, straight))
        run_mbsync(mbsync_config(tmp_path / "through.rc", proxy.port, big_box, through))
    finally:
        proxy.stop()
    a, b = maildir_contents(straight, big_box), maildir_contents(through, big_box)
    assert sum(a.values()) == COUNT
    assert a == b
    assert sum(n for (flags, _), n in a.items() if "S" in flags) == len(range(0, COUNT, 3))
