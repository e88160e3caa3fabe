"""What happens to a message at the end of DATA: facts -> analysis -> policy -> annotation -> durable
spool -> metadata. Knows nothing of sockets: the SMTP handler calls ``accept`` and replies with its result."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import time
from dataclasses import dataclass

from gatewayd import ids, metrics
from gatewayd.analysis.facts import MessageFacts, Verdict
from gatewayd.analysis.pipeline import Pipeline, decide, record_of
from gatewayd.annotate import annotate
from gatewayd.errors import Reject
from gatewayd.mime import extract_facts
from gatewayd.recorder import Recorder, record_to_json
from gatewayd.settings import PolicySection
from gatewayd.smtp.delivery import Deliverer
from gatewayd.spool import Spool
from gatewayd.store.records import MessageRecord

log = logging.getLogger("gatewayd.smtp")
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpts: tuple[str, ...]
    helo: str
    peer_ip: str
    protocol: str  # ESMTP | ESMTPS | ESMTPA | ESMTPSA (RFC 3848)
    login: str = ""  # authenticated user, if any


def received_header(env: Envelope, gw_id: str, hostname: str) -> bytes:
    helo = re.sub(r"[^\w.\-\[\]:]", "", env.helo)[:255] or "unknown"
    stamp = email.utils.format_datetime(dt.datetime.now(dt.UTC).astimezone())
    lines = [
        f"Received: from {helo} ([{env.peer_ip}])",
        f"\tby {hostname} (gatewayd) with {env.protocol} id {gw_id}",
    ]
    lines.append(f"\tfor <{env.rcpts[0]}>; {stamp}" if len(env.rcpts) == 1 else f"\t; {stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def to_record(
    gw_id: str,
    facts: MessageFacts,
    verdict: Verdict,
    env: Envelope,
    action: str,
    policy: PolicySection,
    size: int,
) -> MessageRecord:
    accounts = sorted({r.lower() for r in env.rcpts} | ({env.login.lower()} if env.login else set()))
    state = {"quarantine": "quarantined", "reject": "rejected"}.get(action, "queued")
    return record_of(
        gw_id,
        facts,
        verdict,
        policy,
        accounts=accounts,
        mail_from=env.mail_from,
        rcpt_to=list(env.rcpts),
        size=size,
        action=action,
        delivery_state=state,
        source="smtp",
    )


class Intake:
    def __init__(
        self,
        *,
        spool: Spool,
        pipeline: Pipeline,
        recorder: Recorder,
        deliverer: Deliverer,
        policy: PolicySection,
        hostname: str,
    ) -> None:
        self.spool = spool
        self.pipeline = pipeline
        self.recorder = recorder
        self.deliverer = deliverer
        self.policy = policy
        self.hostname = hostname

    async def accept(self, env: Envelope, raw: bytes) -> str:
        """Return the SMTP reply for the end of DATA; raise ``Reject`` for a policy refusal.

        The message is durable on disk before this returns a 250."""
        if _has_bare_newline(raw):
            # Bare CR/LF would let a message smuggle SMTP commands past the next hop: make them CRLF.
            metrics.BAD_INPUT.labels(protocol="smtp", kind="bare_newline").inc()
            raw = _BARE_NEWLINE.sub(b"\r\n", raw)
        facts = extract_facts(raw, mail_from=env.mail_from, rcpt_to=env.rcpts)
        if facts.defects:
            metrics.BAD_INPUT.labels(protocol="smtp", kind="mime_defect").inc()
        verdict = await self.pipeline.analyse(facts)
        action = decide(verdict, self.policy)
        gw_id = ids.new_id()
        record = to_record(gw_id, facts, verdict, env, action, self.policy, len(raw))
        _count(verdict, self.policy)
        if action == "reject":
            metrics.MESSAGES.labels(result="rejected").inc()
            self.recorder.record(record, None)
            log.info(
                "event=message_rejected id=%s from=%s rcpts=%d spam=%.3f phishing=%.3f",
                gw_id,
                env.mail_from,
                len(env.rcpts),
                verdict.spam_score,
                verdict.phishing_score,
            )
            raise Reject()
        annotated = received_header(env, gw_id, self.hostname) + annotate(
            raw,
            verdict,
            gw_id,
            spam_threshold=self.policy.spam_threshold,
            phishing_threshold=self.policy.phishing_threshold,
            hostname=self.hostname,
        )
        started = time.perf_counter()
        entry = self.spool.add(env.mail_from, list(env.rcpts), annotated, record_to_json(record), gw_id=gw_id)
        if action == "quarantine":
            self.spool.hold(entry, "quarantine", annotated)
        await self.spool.commit()
        metrics.SPOOL_COMMITS.observe(time.perf_counter() - started)
        self.recorder.record(record, entry)
        if action == "quarantine":
            metrics.MESSAGES.labels(result="quarantined").inc()
        else:
            metrics.MESSAGES.labels(result="accepted").inc()
            self.deliverer.kick()
        log.info(
            "event=message_accepted id=%s action=%s from=%s rcpts=%d size=%d spam=%.3f category=%s stage=%s",
            gw_id,
            action,
            env.mail_from,
            len(env.rcpts),
            len(annotated),
            verdict.spam_score,
            verdict.category,
            verdict.stage,
        )
        return f"250 2.0.0 OK queued as {gw_id}"


def _has_bare_newline(raw: bytes) -> bool:
    """A CR not followed by LF or an LF not preceded by CR: three counts in C instead of a regex scan with
    look-behind (about 15x faster on 10 KB)."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") != crlf or raw.count(b"\r") != crlf


def _count(verdict: Verdict, policy: PolicySection) -> None:
    if verdict.is_spam(policy.spam_threshold):
        metrics.VERDICTS.labels(kind="spam").inc()
    if verdict.is_phishing(policy.phishing_threshold):
        metrics.VERDICTS.labels(kind="phishing").inc()
    metrics.VERDICTS.labels(kind=f"category_{verdict.category}").inc()
