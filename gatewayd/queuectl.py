"""``gatewayd queue``: list, flush, delete, hold and release spooled messages (like postqueue/postsuper).

The running daemon answers on a unix socket in the spool directory (mode 0600, so only the daemon's own
user and root may use it); when no daemon runs, the CLI opens the spool itself under its lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatewayd.spool import Spool

log = logging.getLogger("gatewayd.queue")
OPS = ("list", "flush", "delete", "hold", "release")
SOCKET_NAME = "control.sock"


class QueueError(Exception):
    pass


async def apply(
    spool: Spool,
    op: str,
    gw_id: str = "",
    *,
    kick: Callable[[], None] = lambda: None,
    on_state: Callable[[str, str], None] = lambda i, s: None,
) -> dict[str, Any]:
    """Carry out one operation on an open spool; the result is JSON-serialisable."""
    if op == "list":
        return {"messages": spool.listing()}
    if op == "flush":
        count = 0
        for queued in spool.entries.values():
            if not queued.done and queued.pending:
                queued.next_attempt = 0.0
                count += 1
        kick()
        return {"flushed": count}
    if op not in OPS:
        raise QueueError(f"unknown operation {op!r}")
    entry = spool.entries.get(gw_id)
    if op == "delete":
        if gw_id in spool.held:
            spool.drop_held(gw_id)
        elif entry is not None and not entry.done:
            entry.pending = []
            entry.done = True
            spool.update(entry)
        else:
            raise QueueError(f"no such message: {gw_id}")
        on_state(gw_id, "deleted")
        return {"deleted": gw_id}
    if op == "hold":
        if entry is None or entry.done:
            raise QueueError(f"no such message in the active queue: {gw_id}")
        spool.hold(entry, "hold")
        on_state(gw_id, "held")
        return {"held": gw_id}
    if gw_id not in spool.held:  # release
        raise QueueError(f"no such message on hold or in quarantine: {gw_id}")
    await spool.release(gw_id)
    kick()
    on_state(gw_id, "queued")
    return {"released": gw_id}


async def serve(
    spool: Spool, *, kick: Callable[[], None], on_state: Callable[[str, str], None]
) -> asyncio.Server:
    path = spool.root / SOCKET_NAME
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            result = await apply(spool, request["op"], request.get("id", ""), kick=kick, on_state=on_state)
            await spool.commit()
            reply: dict[str, Any] = {"ok": True, **result}
        except QueueError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError):
            reply = {"ok": False, "error": "bad request"}
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    path.chmod(0o600)
    return server


async def request(spool_path: str, op: str, gw_id: str = "") -> dict[str, Any]:
    """Ask the running daemon; if none answers, operate on the spool directly."""
    path = Path(spool_path) / SOCKET_NAME
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        spool = Spool(spool_path)
        spool.open()  # raises SpoolLocked if a daemon holds it but its socket is gone
        try:
            result = await apply(spool, op, gw_id)
            await spool.commit()
            return {"ok": True, "offline": True, **result}
        except QueueError as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            spool.close()
    writer.write(json.dumps({"op": op, "id": gw_id}).encode() + b"\n")
    await writer.drain()
    reply: dict[str, Any] = json.loads(await reader.readline())
    writer.close()
    await writer.wait_closed()
    return reply
