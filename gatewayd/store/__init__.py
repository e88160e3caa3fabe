"""Storage facade: the only package that imports SQLAlchemy. See ``gatewayd.store.facade.Store``."""

from gatewayd.store.records import Change, MailboxEntry, MessageRecord

__all__ = ["Change", "MailboxEntry", "MessageRecord"]
