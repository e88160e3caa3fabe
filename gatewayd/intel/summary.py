"""Extractive summaries: 1-3 sentences of the author's own words, at most ~300 characters.

With sentence embeddings (from the encoder, when the budget allows) sentences are ranked by centrality (mean
cosine similarity to the rest of the message) plus a bonus for coming early; without them the lead sentences
are used (``gatewayd.analysis.text.summarize_lead``). Either way the chosen sentences keep their order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gatewayd.analysis.text import clean_body, split_sentences, summarize_lead, truncate

LIMIT = 300
MAX_CANDIDATES = 6  # sentences embedded per message: the first ones carry the message, each costs ~3 ms
MIN_CHARS = 12
SENTENCE_TOKENS = 32  # a summary sentence longer than this is ranked by its beginning
POSITION_WEIGHT = 0.15


def candidates(text: str) -> list[str]:
    """Sentences worth ranking: the first ``MAX_CANDIDATES`` of the cleaned body with some substance."""
    out = [s for s in split_sentences(clean_body(text[:20_000])) if len(s) >= MIN_CHARS]
    return out[:MAX_CANDIDATES]


def lead(text: str, subject: str = "", limit: int = LIMIT) -> str:
    """The cheap summary: lead sentences, else the subject."""
    return summarize_lead(text[:20_000], limit) or truncate(subject.strip(), limit)


def central(sentences: list[str], emb: npt.NDArray[np.float32], limit: int = LIMIT) -> str:
    """Up to three sentences ranked by centrality + position, in document order, within ``limit`` chars."""
    n = len(sentences)
    if n == 0:
        return ""
    if n <= 2:
        return truncate(" ".join(sentences), limit)
    sim = emb @ emb.T
    centrality = (sim.sum(axis=1) - 1.0) / (n - 1)
    score = centrality + POSITION_WEIGHT * (1.0 - np.arange(n) / n)
    chosen: list[int] = []
    used = 0
    for i in np.argsort(-score).tolist():
        if len(chosen) == 3:
            break
        extra = len(sentences[i]) + (1 if chosen else 0)
        if chosen and used + extra > limit:
            continue
        chosen.append(i)
        used += extra
    return truncate(" ".join(sentences[i] for i in sorted(chosen)), limit)
