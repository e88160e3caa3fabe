"""The analysis pipeline: run the configured classifier within a time budget, fall back to the rules,
and decide what the policy does with the verdict. Shared by the SMTP path, the IMAP watcher and the CLI."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from gatewayd import metrics
from gatewayd.analysis.facts import Classifier, MessageFacts, Verdict
from gatewayd.settings import PolicySection

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
