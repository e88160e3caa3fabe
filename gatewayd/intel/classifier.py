"""``ModelClassifier``: the cascade (fast linear stage, then the sentence encoder for unsure mail) behind the
``Classifier`` protocol, with a content-hash cache and a per-message fallback to the rules.

A message reaches the encoder only when the fast stage's spam or phishing score falls inside the band set on
validation data (models/manifest.json) and its time budget still has room; the encoder heads' probabilities
are then averaged with the fast stage's. Summaries use sentence embeddings for encoder-stage mail (same
budget rule), lead sentences otherwise. Whatever goes wrong for a message (budget spent, an exception), the
rules answer for it with ``fallback_reason`` set and ``gatewayd_analysis_fallbacks`` counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from gatewayd import metrics
from gatewayd.analysis.actions import find_actions
from gatewayd.analysis.facts import CATEGORIES, Classifier, MessageFacts, Stage, Verdict, damp_priority
from gatewayd.intel import features as F
from gatewayd.intel import summary as S
from gatewayd.intel.engine import STAGE, Emit, Engine, Models
from gatewayd.intel.labels import header_category

log = logging.getLogger("gatewayd.intel")

HEADER_PRIOR = 0.6  # weight of the category the headers imply (List-Unsubscribe, social sender, ...)
ENCODER_RESERVE = 0.05  # seconds a message must have left to be worth sending to the encoder
_KEY_HEADERS = ("list-unsubscribe", "list-id", "precedence", "auto-submitted", "x-mailing-list")


def _squash(p: float) -> float:
    """Halve the log-odds and shift them towards ham: 0.93 -> 0.45, 0.999 -> 0.88."""
    logit = math.log(max(p, 1e-7) / max(1 - p, 1e-7))
    return 1 / (1 + math.exp(-(0.5 * logit - 1.5)))


def cache_key(facts: MessageFacts) -> bytes:
    """Identical bulk mail (same sender, subject, body, list headers, date) hashes alike; ids do not count."""
    h = hashlib.blake2b(digest_size=16)
    for part in (
        facts.from_addr,
        facts.from_name,
        facts.reply_to,
        facts.subject,
        facts.text,
        facts.html[:2000],
        "\x1f".join(facts.links[:50]),
        "\x1f".join(facts.attachments),
        str(len(facts.to) + len(facts.cc)),
        facts.date.date().isoformat() if facts.date else "",
    ):
        h.update(part.encode("utf-8", "replace"))
        h.update(b"\x1e")
    for name, value in facts.headers:
        if name.lower() in _KEY_HEADERS:
            h.update(f"{name.lower()}:{value}".encode("utf-8", "replace"))
    return h.digest()


class ModelClassifier:
    """Model-backed classifier; safe to call from many tasks at once (they share micro-batches)."""

    name = "models"

    def __init__(
        self,
        models: Models,
        *,
        fallback: Classifier,
        budget: float = 2.0,
        max_batch: int = 16,
        batch_wait: float = 0.005,
        cache_size: int = 4096,
        encoder: bool = True,
        summary_encoder: bool = True,
    ) -> None:
        self.models = models
        self.fallback = fallback
        self.budget = budget
        self.encoder = encoder
        self.summary_encoder = summary_encoder
        # Weight of the encoder heads against the fast stage, per head (manifest "encoder_mix"; default 0.5).
        mix = models.manifest.get("encoder_mix", 0.5)
        self.encoder_mix = np.broadcast_to(
            np.asarray(mix, np.float32), (len(models.manifest["heads"]),)
        ).copy()
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Verdict] = OrderedDict()
        self.engine: Engine[MessageFacts, Verdict] = Engine(
            self.analyse_batch, max_batch=max_batch, batch_wait=batch_wait
        )

    # -- the blocking part, run in the engine's executor ------------------------------------------------
    def analyse_batch(
        self, items: list[MessageFacts], deadlines: list[float], emit: Emit | None = None
    ) -> list[Verdict]:
        """Verdicts for a batch (blocking; in the executor). Deadlines are ``time.monotonic()`` values.

        Messages the fast stage decides are handed to ``emit(index, verdict)`` at once, so they never wait
        behind the encoder; the unsure ones follow one by one as the encoder finishes each.
        """
        started = time.perf_counter()
        probs = self.models.fast_probs([F.featurize(f) for f in items])
        sure = self.models.fast_sure(probs)
        now = time.monotonic()
        todo = [
            i
            for i in range(len(items))
            if self.encoder and not sure[i] and deadlines[i] - now > ENCODER_RESERVE
        ]
        escalated = set(todo)
        out: list[Verdict | None] = [None] * len(items)
        fast_ms = (time.perf_counter() - started) * 1000.0 / len(items)
        for i, facts in enumerate(items):
            if i not in escalated:
                STAGE.labels(stage="fast").inc()
                summary = S.lead(facts.text, facts.subject)
                out[i] = self._verdict(facts, probs[i], "fast", summary, fast_ms)
                if emit is not None:
                    emit(i, out[i])
        mix = self.encoder_mix
        for i in todo:
            t0 = time.perf_counter()
            facts = items[i]
            emb = self.models.embed([F.encoder_text(facts)])  # one call per message: see Models.embed_each
            p = (1 - mix) * probs[i] + mix * self.models.encoder_probs(emb)[0]
            STAGE.labels(stage="encoder").inc()
            summary = self._summary(facts, deadlines[i])
            ms = fast_ms + (time.perf_counter() - t0) * 1000.0
            out[i] = self._verdict(facts, p, "encoder", summary, ms)
            if emit is not None:
                emit(i, out[i])
        return [v for v in out if v is not None]

    def _summary(self, facts: MessageFacts, deadline: float) -> str:
        """Embedding centrality when the budget still has room, lead sentences otherwise."""
        if self.summary_encoder and deadline - time.monotonic() > ENCODER_RESERVE:
            cands = S.candidates(facts.text)
            if len(cands) > 2:
                return S.central(cands, self.models.embed(cands, max_tokens=S.SENTENCE_TOKENS))
        return S.lead(facts.text, facts.subject)

    def _verdict(
        self, facts: MessageFacts, p: npt.NDArray[np.float32], stage: Stage, summary: str, ms: float
    ) -> Verdict:
        spam, phishing, priority = float(p[0]), float(p[1]), float(p[2])
        if F.looks_foreign(facts.subject + "\n" + facts.text):
            # Every training ham is English, so wording in another language reads as spam to the models:
            # discount that evidence rather than junk legitimate foreign mail (strong spam stays spam).
            spam = _squash(spam)
        scores = {c: float(p[3 + j]) for j, c in enumerate(CATEGORIES)}
        implied = header_category(facts)
        if implied is not None:  # the headers' word is what the labels were made of: let it lead
            scores = {c: HEADER_PRIOR * (c == implied) + (1 - HEADER_PRIOR) * v for c, v in scores.items()}
        category = max(CATEGORIES, key=scores.__getitem__)
        actions = find_actions(facts.text[:20_000], facts.date)
        priority = damp_priority(priority, spam=spam, phishing=phishing, category=category)
        return Verdict(
            spam_score=spam,
            phishing_score=phishing,
            category=category,
            category_scores=scores,
            important=priority >= 0.5,
            priority_score=priority,
            summary=summary,
            actions=actions,
            stage=stage,
            elapsed_ms=ms,
        )

    # -- the asyncio side ---------------------------------------------------------------------------------
    async def _fallback(self, facts: MessageFacts, reason: str) -> Verdict:
        metrics.FALLBACKS.labels(reason=reason).inc()
        verdict = (await self.fallback.classify_many([facts]))[0]
        return replace(verdict, fallback_reason=reason)

    async def _one(self, facts: MessageFacts) -> Verdict:
        try:
            future = await self.engine.submit(facts, self.budget)
            return await asyncio.wait_for(future, self.budget)
        except TimeoutError:
            return await self._fallback(facts, "budget")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=model_error")
            return await self._fallback(facts, "error")

    async def classify_many(self, facts: list[MessageFacts]) -> list[Verdict]:
        """One verdict per message, in order; cached verdicts are reused, the rest share micro-batches."""
        keys = [cache_key(f) for f in facts] if self.cache_size else [b""] * len(facts)
        out: list[Verdict | None] = [None] * len(facts)
        todo: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            hit = self._cache.get(key) if self.cache_size else None
            if hit is not None:
                self._cache.move_to_end(key)
                STAGE.labels(stage="cache").inc()
                out[i] = hit
            elif self.cache_size:
                todo.setdefault(key, []).append(i)  # duplicates inside one call are analysed once too
            else:
                todo[i.to_bytes(8, "big")] = [i]
        verdicts = await asyncio.gather(*(self._one(facts[idx[0]]) for idx in todo.values()))
        for (key, idx), verdict in zip(todo.items(), verdicts, strict=True):
            for i in idx:
                out[i] = verdict
            if self.cache_size and not verdict.fallback_reason:
                self._cache[key] = verdict
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [v for v in out if v is not None]

    async def close(self) -> None:
        await self.engine.close()
