"""gatewayd: a self-hosted AI mail gateway (SMTP and IMAP proxy with on-prem models)."""

__version__ = "0.1.0"
