"""The analysis pipeline: run the configured classifier within a time budget, fall back to the rules,
and decide what the policy does with the verdict. Shared by the SMTP path, the IMAP watcher and the CLI."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from gatewayd import metrics
from gatewayd.analysis.facts import Classifier, MessageFacts, Verdict
from gatewayd.settings import PolicySection
from gatewayd.store.records import MessageRecord

log = logging.getLogger("gatewayd.analysis")


class Pipeline:
    """``analyse`` never raises for a message: the worst case is the rules' answer."""

    def __init__(self, classifier: Classifier, *, fallback: Classifier, budget: float) -> None:
        self.classifier = classifier
        self.fallback = fallback
        self.budget = budget

    async def analyse(self, facts: MessageFacts) -> Verdict:
        return (await self.analyse_many([facts]))[0]

    async def analyse_many(self, batch: list[MessageFacts]) -> list[Verdict]:
        started = time.perf_counter()
        reason = ""
        try:
            async with asyncio.timeout(self.budget * max(1, len(batch) / 64)):
                verdicts = await self.classifier.classify_many(batch)
        except TimeoutError:
            reason = "timeout"
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=analysis_error classifier=%s", self.classifier.name)
            reason = "error"
        if reason:
            metrics.FALLBACKS.labels(reason=reason).inc(len(batch))
            verdicts = [replace(v, fallback_reason=reason) for v in await self.fallback.classify_many(batch)]
        elapsed = time.perf_counter() - started
        for _ in verdicts:
            metrics.ANALYSIS_SECONDS.observe(elapsed / len(batch))
        return verdicts

    async def close(self) -> None:
        await self.classifier.close()
        if self.fallback is not self.classifier:
            await self.fallback.close()


def decide(verdict: Verdict, policy: PolicySection) -> str:
    """tag | quarantine | reject: the strictest action any matching verdict asks for."""
    actions = ["tag"]
    if verdict.is_phishing(policy.phishing_threshold):
        actions.append(policy.phishing)
    if verdict.is_spam(policy.spam_threshold):
        actions.append(policy.spam)
    order = {"tag": 0, "quarantine": 1, "reject": 2}
    return max(actions, key=order.__getitem__)


def record_of(
    gw_id: str,
    facts: MessageFacts,
    verdict: Verdict,
    policy: PolicySection,
    *,
    accounts: list[str],
    **fields: Any,
) -> MessageRecord:
    """The metadata record of an analysed message; ``fields`` adds what the caller knows (envelope,
    policy action, delivery state, source)."""
    base: dict[str, Any] = dict(
        id=gw_id,
        message_id=facts.message_id,
        accounts=accounts,
        from_addr=facts.from_addr,
        to_addrs=list(facts.to),
        subject=facts.subject[:998],
        date=facts.date,
        size=facts.size,
        spam_score=verdict.spam_score,
        is_spam=verdict.is_spam(policy.spam_threshold),
        phishing_score=verdict.phishing_score,
        is_phishing=verdict.is_phishing(policy.phishing_threshold),
        category=verdict.category,
        important=verdict.important,
        priority_score=verdict.priority_score,
        summary=verdict.summary,
        actions=[{"text": a.text, "due": a.due.isoformat() if a.due else None} for a in verdict.actions],
        stage=verdict.stage,
    )
    return MessageRecord(**(base | fields))
