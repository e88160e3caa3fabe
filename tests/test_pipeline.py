"""The pipeline never loses a verdict: a slow or broken classifier is replaced by the rules, visibly."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from gatewayd.analysis.facts import MessageFacts, Verdict
from gatewayd.analysis.pipeline import Pipeline, decide
from gatewayd.analysis.rules import RulesClassifier
from gatewayd.mime import extract_facts
from gatewayd.settings import PolicySection

FACTS = extract_facts(b"From: a@b.test\r\nSubject: hi\r\n\r\nHello there.\r\n")


class Slow:
    name = "slow"

    async def classify_many(self, facts: list[MessageFacts]) -> list[Verdict]:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


class Broken(Slow):
    name = "broken"

    async def classify_many(self, facts: list[MessageFacts]) -> list[Verdict]:
        raise RuntimeError("model exploded")


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("gatewayd_analysis_fallbacks_total", {"reason": reason}) or 0.0


async def test_timeout_falls_back_to_rules_and_is_counted() -> None:
    before = fallbacks("timeout")
    verdict = await Pipeline(Slow(), fallback=RulesClassifier(), budget=0.05).analyse(FACTS)
    assert verdict.stage == "rules" and verdict.fallback_reason == "timeout"
    assert fallbacks("timeout") == before + 1


async def test_error_falls_back_to_rules_and_is_counted() -> None:
    before = fallbacks("error")
    verdict = await Pipeline(Broken(), fallback=RulesClassifier(), budget=1).analyse(FACTS)
    assert verdict.fallback_reason == "error" and verdict.summary
    assert fallbacks("error") == before + 1


def _verdict(spam: float, phishing: float) -> Verdict:
    return Verdict(
        spam_score=spam,
        phishing_score=phishing,
        category="personal",
        category_scores={},
        important=False,
        priority_score=0.0,
        summary="",
    )


def test_policy_takes_the_strictest_action() -> None:
    policy = PolicySection(spam="quarantine", phishing="reject")
    assert decide(_verdict(0.1, 0.1), policy) == "tag"
    assert decide(_verdict(0.9, 0.1), policy) == "quarantine"
    assert decide(_verdict(0.9, 0.9), policy) == "reject"
    assert decide(_verdict(0.9, 0.9), PolicySection()) == "tag"
