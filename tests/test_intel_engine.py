"""The model engine: batching equals single, budget and error fallbacks, cache, bad model files."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from gatewayd import intel
from gatewayd.analysis.facts import MessageFacts
from gatewayd.analysis.rules import RulesClassifier
from gatewayd.intel import features as F
from gatewayd.intel.classifier import ModelClassifier
from gatewayd.intel.engine import Emit, Engine, ModelLoadError, Models
from gatewayd.mime import extract_facts
from gatewayd.settings import AnalysisSection

MODELS = Path(__file__).resolve().parents[1] / "models"

MESSAGES = [
    b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\nSubject: Re: budget\r\n"
    b"Date: Wed, 4 Mar 2026 09:00:00 +0000\r\n\r\n"
    b"Bob, could you send me the Q1 figures by Friday?\r\nThanks, Ann\r\n",
    b"From: Shop <no-reply@shop.example>\r\nTo: bob@example.org\r\nSubject: Your order #12345 has shipped\r\n"
    b"\r\nYour order has shipped and will arrive on Monday. Track it at https://shop.example/t/12345\r\n",
    b"From: News <news@list.example>\r\nTo: bob@example.org\r\nSubject: Weekly digest\r\n"
    b"List-Unsubscribe: <mailto:unsub@list.example>\r\nPrecedence: bulk\r\n\r\n"
    b"This week: ten stories about gardening. Click here to unsubscribe.\r\n",
    b"From: PayPal <service@paypa1-secure.example>\r\nTo: bob@example.org\r\nSubject: Account suspended\r\n"
    b"\r\nDear customer, your account has been limited. Verify your identity at "
    b"http://192.0.2.7/paypal/login "
    b"within 24 hours or it will be closed.\r\n",
    b"From: winner@lotto.example\r\nTo: bob@example.org\r\nSubject: CONGRATULATIONS you WON $1,000,000\r\n"
    b"\r\nClaim your prize now!!! Send your bank details to claim the money. Limited offer, act now.\r\n",
    b"From: carol@example.net\r\nTo: bob@example.org\r\nSubject: lunch\r\n\r\nLunch tomorrow at noon?\r\n",
]


@pytest.fixture(scope="module")
def models() -> Models:
    return Models.load(MODELS, threads=1)


def facts_list() -> list[MessageFacts]:
    return [extract_facts(m) for m in MESSAGES]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_batched_equals_single(models: Models) -> None:
    batched = ModelClassifier(models, fallback=RulesClassifier(), cache_size=0, max_batch=16, batch_wait=0.05)
    single = ModelClassifier(models, fallback=RulesClassifier(), cache_size=0, max_batch=1, batch_wait=0)
    try:
        many = await batched.classify_many(facts_list())
        one = [(await single.classify_many([f]))[0] for f in facts_list()]
    finally:
        await batched.close()
        await single.close()
    assert len(many) == len(one) == len(MESSAGES)
    for a, b in zip(many, one, strict=True):
        assert (a.stage, a.category, a.important, a.summary, a.actions) == (
            b.stage,
            b.category,
            b.important,
            b.summary,
            b.actions,
        )
        assert a.spam_score == pytest.approx(b.spam_score, abs=1e-4)
        assert a.phishing_score == pytest.approx(b.phishing_score, abs=1e-4)
        assert a.fallback_reason == ""


async def test_concurrent_callers_share_batches(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier(), cache_size=0, max_batch=8, batch_wait=0.05)
    sizes: list[int] = []
    real = clf.analyse_batch

    def spy(items: list[MessageFacts], deadlines: list[float], emit: Emit) -> list:  # type: ignore[type-arg]
        sizes.append(len(items))
        return real(items, deadlines, emit)

    clf.engine = Engine(spy, max_batch=8, batch_wait=0.05)
    try:
        results = await asyncio.gather(*(clf.classify_many([f]) for f in facts_list()))
    finally:
        await clf.close()
    assert [len(r) for r in results] == [1] * len(MESSAGES)
    assert max(sizes) > 1 and sum(sizes) == len(MESSAGES)


async def test_sensible_verdicts(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier())
    try:
        v = await clf.classify_many(facts_list())
    finally:
        await clf.close()
    assert v[0].spam_score < 0.5 and v[0].category == "personal"
    assert (
        v[0].actions and v[0].actions[0].due is not None and v[0].actions[0].due.isoformat() == "2026-03-06"
    )
    assert v[2].category == "newsletter" and not v[2].important
    assert v[3].phishing_score >= 0.5
    assert v[4].spam_score >= 0.5
    assert all(x.stage in ("fast", "encoder") for x in v)


async def test_budget_exceeded_falls_back_to_rules(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier(), budget=0.01, cache_size=0)

    def slow(items: list[MessageFacts], deadlines: list[float], emit: Emit) -> list:  # type: ignore[type-arg]
        import time

        time.sleep(0.1)
        return clf.analyse_batch(items, deadlines)

    clf.engine = Engine(slow, max_batch=4, batch_wait=0)
    before = counter("gatewayd_analysis_fallbacks_total", reason="budget")
    try:
        v = await clf.classify_many(facts_list()[:2])
    finally:
        await clf.close()
    assert [x.stage for x in v] == ["rules", "rules"]
    assert [x.fallback_reason for x in v] == ["budget", "budget"]
    assert counter("gatewayd_analysis_fallbacks_total", reason="budget") == before + 2


async def test_model_error_falls_back_per_message(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier(), cache_size=0)

    def broken(items: list[MessageFacts], deadlines: list[float], emit: Emit) -> list:  # type: ignore[type-arg]
        raise RuntimeError("onnxruntime exploded")

    clf.engine = Engine(broken)
    before = counter("gatewayd_analysis_fallbacks_total", reason="error")
    try:
        v = await clf.classify_many(facts_list()[:1])
    finally:
        await clf.close()
    assert v[0].stage == "rules" and v[0].fallback_reason == "error"
    assert counter("gatewayd_analysis_fallbacks_total", reason="error") == before + 1


async def test_cache_hit_skips_the_models(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier(), cache_size=8)
    calls: list[int] = []
    real = clf.analyse_batch

    def spy(items: list[MessageFacts], deadlines: list[float], emit: Emit) -> list:  # type: ignore[type-arg]
        calls.append(len(items))
        return real(items, deadlines, emit)

    clf.engine = Engine(spy)
    bulk = facts_list()[2]
    before = counter("gatewayd_model_stage_total", stage="cache")
    try:
        first = await clf.classify_many([bulk, bulk])
        second = await clf.classify_many([bulk])
    finally:
        await clf.close()
    assert sum(calls) == 1
    assert first[0] == first[1] == second[0]
    assert counter("gatewayd_model_stage_total", stage="cache") == before + 1


def _copy_models(tmp: Path) -> Path:
    target = tmp / "models"
    target.mkdir()
    for name in intel.FILES:
        shutil.copy(MODELS / name, target / name)
    return target


@pytest.mark.parametrize("name", intel.FILES)
def test_missing_model_file_is_named(tmp_path: Path, name: str) -> None:
    d = _copy_models(tmp_path)
    (d / name).unlink()
    settings = AnalysisSection(classifier="models", models_dir=str(d))
    with pytest.raises(ModelLoadError) as err:
        intel.build_classifier(settings)
    assert err.value.path == str(d / name)
    problems = intel.check_models(settings)
    assert len(problems) == 1 and str(d / name) in problems[0] and "missing" in problems[0]


@pytest.mark.parametrize("name", intel.FILES)
def test_corrupt_model_file_is_named(tmp_path: Path, name: str) -> None:
    d = _copy_models(tmp_path)
    (d / name).write_bytes(b"\x00garbage" * 10)
    settings = AnalysisSection(classifier="models", models_dir=str(d))
    problems = intel.check_models(settings)
    assert len(problems) == 1 and str(d / name) in problems[0]


def test_bundled_models_check_clean() -> None:
    assert intel.check_models(AnalysisSection(classifier="models")) == []


def test_spam_and_phishing_heads_ignore_list_headers(models: Models) -> None:
    """Enron has no headers: list/bulk facts must not move the spam or phishing scores (source leakage).

    Behavioural, through the shipped fast.onnx: switching on every list/bulk feature slot changes the
    category/priority heads but leaves the spam and phishing probabilities exactly as they were."""
    idx, val = F.featurize(facts_list()[0])
    plain = idx[idx < F.LIST_START], val[idx < F.LIST_START]
    lists = np.arange(F.LIST_START, F.DIM, dtype=np.int64)
    listy = np.concatenate([plain[0], lists]), np.concatenate([plain[1], np.ones(len(lists), np.float32)])
    probs = models.fast_probs([plain, listy])
    assert np.array_equal(probs[0, :2], probs[1, :2])  # spam, phishing
    assert not np.array_equal(probs[0, 2:], probs[1, 2:])  # the other heads do read them


@pytest.mark.parametrize("band", [None, [0.0, 1.01]])
def test_fast_answers_are_emitted_before_the_encoder_runs(models: Models, band: list[float] | None) -> None:
    if band is not None:  # every message unsure: all go to the encoder
        models = replace(
            models, manifest={**models.manifest, "fast": {**models.manifest["fast"], "spam_band": band}}
        )
    clf = ModelClassifier(models, fallback=RulesClassifier(), cache_size=0)
    emitted: list[tuple[int, str]] = []
    verdicts = clf.analyse_batch(
        facts_list(), [float("inf")] * len(MESSAGES), lambda i, v: emitted.append((i, v.stage))
    )
    assert sorted(i for i, _ in emitted) == list(range(len(MESSAGES)))
    stages = [s for _, s in emitted]
    assert stages == sorted(stages, key=lambda s: s != "fast")  # every fast answer before any encoder answer
    assert [v.stage for v in verdicts] == [dict(emitted)[i] for i in range(len(MESSAGES))]
    if band is not None:
        assert set(stages) == {"encoder"}
