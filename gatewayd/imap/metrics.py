"""Prometheus metrics of the IMAP proxy and the INBOX watcher, named after the events they count."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("gatewayd_imap_sessions", "IMAP client connections open now.")
CONNECTIONS_TOTAL = Counter("gatewayd_imap_connections", "IMAP client connections accepted.")
LOGINS = Counter(
    "gatewayd_imap_logins",
    "IMAP login attempts by result (ok, failed, throttled, unavailable).",
    ["result"],
)
BYTES = Counter(
    "gatewayd_imap_relayed_bytes",
    "Bytes relayed after login, by direction (client_to_upstream, upstream_to_client).",
    ["direction"],
)
COMMANDS = Counter("gatewayd_imap_commands", "IMAP commands seen from clients, by name.", ["command"])
UPSTREAM_ERRORS = Counter(
    "gatewayd_imap_upstream_errors", "Upstream IMAP failures, by kind (connect, tls, protocol).", ["kind"]
)
MESSAGES_ANALYSED = Counter(
    "gatewayd_imap_messages_analysed",
    "Messages found by the INBOX watcher, by how their verdict was obtained (analysed, reused).",
    ["how"],
)
KEYWORD_WRITES = Counter("gatewayd_imap_keyword_writes", "UID STORE of verdict keywords that succeeded.")
KEYWORD_FAILURES = Counter(
    "gatewayd_imap_keyword_failures", "Verdict keywords that could not be written, by reason.", ["reason"]
)
FEEDBACK = Counter("gatewayd_imap_feedback", "User feedback seen through IMAP flags, by kind.", ["kind"])

# Commands outside this set are counted as "OTHER" so a client cannot grow the label set without bound.
KNOWN_COMMANDS = frozenset(
    """APPEND AUTHENTICATE CAPABILITY CHECK CLOSE COPY CREATE DELETE DONE ENABLE EXAMINE EXPUNGE FETCH
    GETQUOTA GETQUOTAROOT ID IDLE LIST LOGIN LOGOUT LSUB MOVE NAMESPACE NOOP RENAME SEARCH SELECT SETQUOTA
    SORT STARTTLS STATUS STORE SUBSCRIBE THREAD UNSELECT UNSUBSCRIBE GETMETADATA SETMETADATA COMPRESS
    UNAUTHENTICATE""".split()
) | {f"UID {name}" for name in "COPY FETCH MOVE SEARCH SORT STORE THREAD EXPUNGE".split()}


def command_label(name: str) -> str:
    """The metrics label for a command name."""
    return name if name in KNOWN_COMMANDS else "OTHER"
