"""Prometheus metrics of the SMTP path, spool and store; named after the same events as the log records.

The model engine and the IMAP proxy define theirs beside their code, in the same default registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series add nothing a scrape needs

SMTP_CONNECTIONS = Counter("gatewayd_smtp_connections", "SMTP connections accepted", ["listener"])
SMTP_SESSIONS = Gauge("gatewayd_smtp_sessions", "SMTP sessions open now")
MESSAGES = Counter(
    "gatewayd_smtp_messages", "Messages at the end of DATA, by result", ["result"]
)  # accepted | quarantined | rejected | too_big | tempfail
BAD_INPUT = Counter("gatewayd_bad_input", "Malformed input seen, by protocol and kind", ["protocol", "kind"])
AUTH = Counter(
    "gatewayd_smtp_auth", "SMTP AUTH attempts by result", ["result"]
)  # ok | failed | throttled | error
ANALYSIS_SECONDS = Histogram(
    "gatewayd_analysis_seconds",
    "Time to analyse one message",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
VERDICTS = Counter("gatewayd_verdicts", "Verdicts by kind", ["kind"])  # spam | phishing | category_<name>
FALLBACKS = Counter(
    "gatewayd_analysis_fallbacks", "Rules answered instead of the configured classifier", ["reason"]
)  # timeout | error | unavailable
DELIVERY_SECONDS = Histogram(
    "gatewayd_delivery_seconds",
    "Time of one delivery attempt upstream",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERIES = Counter(
    "gatewayd_delivery_recipients", "Recipients by delivery result", ["result"]
)  # delivered | deferred | bounced
UPSTREAM_ERRORS = Counter("gatewayd_upstream_errors", "Upstream connection or protocol failures", ["kind"])
SPOOL_MESSAGES = Gauge("gatewayd_spool_messages", "Messages waiting for delivery in the spool")
SPOOL_HELD = Gauge("gatewayd_spool_held_messages", "Messages on hold or in quarantine")
SPOOL_OLDEST = Gauge("gatewayd_spool_oldest_age_seconds", "Age of the oldest message waiting for delivery")
SPOOL_COMMITS = Histogram(
    "gatewayd_spool_commit_seconds",
    "Time from spooling to durable (group commit)",
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
STORE_ERRORS = Counter("gatewayd_store_errors", "Metadata store operations that failed", ["op"])
STORE_BATCH = Histogram(
    "gatewayd_store_batch_size",
    "Records written per store transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
