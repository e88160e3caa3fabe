"""Client TLS contexts for connections gatewayd opens to upstream servers (SMTP delivery, SMTP AUTH checks,
IMAP logins and watchers), from the ``ca_file``/``verify`` options their config sections share."""

from __future__ import annotations

import ssl


def client_context(ca_file: str, verify: bool) -> ssl.SSLContext:
    """Verify against ``ca_file`` (empty: the system store); ``verify = false`` turns checking off."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
