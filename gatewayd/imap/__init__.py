"""IMAP proxy: pure framing, the per-connection session, the listeners, and the INBOX watcher."""
