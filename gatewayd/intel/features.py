"""Hashed text and header features for the fast stage, shared by training and run time (pure numpy).

A message becomes a sparse vector of ``DIM`` slots given as (indices, values): word unigrams and bigrams,
character 4-grams of the normalised word stream, subject words, and a few header facts. Addresses, URLs and
digits are masked so the model learns wording rather than the corpora's senders. The hash is stable across
processes (crc32 and a fixed multiplicative mix), never Python's randomised ``hash``.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import numpy.typing as npt

from gatewayd.analysis.facts import MessageFacts
from gatewayd.analysis.text import clean_body, collapse_ws
from gatewayd.intel.labels import _NOTIFY_LOCAL, header_category, is_social_domain

VERSION = 3
DIM_TEXT = 1 << 17
DIM_GENERIC = 1 << 11  # header facts every head may use (links, HTML, replies)
DIM_LIST = 1 << 11  # list/bulk/sender facts: category and priority heads only (Enron has no headers)
GENERIC_START = DIM_TEXT
LIST_START = DIM_TEXT + DIM_GENERIC
DIM = DIM_TEXT + DIM_GENERIC + DIM_LIST
MAX_CHARS = 3000  # of body text featurised; the head of a mail carries the signal
MAX_WORDS = 500
CHAR_CHARS = 1500

_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)([\w.-]+)[^\s<>\"')\]]*", re.I)
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"\w+")
_IP_HOST = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")

Sparse = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


def _crc(tokens: list[str], seed: int) -> npt.NDArray[np.uint64]:
    return np.fromiter(
        (zlib.crc32(t.encode("utf-8", "replace"), seed) for t in tokens), dtype=np.uint64, count=len(tokens)
    )


def _slot(h: npt.NDArray[np.uint64], size: int) -> npt.NDArray[np.int64]:
    mixed = (h * _MIX) >> np.uint64(20)
    return (mixed % np.uint64(size)).astype(np.int64)


def normalise_text(text: str) -> str:
    """Lower-case, mask e-mail addresses, URLs (keeping the host's last two labels) and digit runs."""
    text = text[:MAX_CHARS].lower()
    text = _EMAIL.sub(" emailaddr ", text)
    text = _URL.sub(lambda m: " urlx " + " ".join(m.group(1).split(".")[-2:]) + " ", text)
    return _DIGITS.sub("0", text)


_FOREIGN = frozenset(
    # German, French, Spanish, Italian, Dutch, Portuguese function words that are not English words
    "der die das und ist nicht mit sie wir ich ein eine den dem für auf auch sich von zu wie bitte "
    "le la les et est une des du pour pas vous nous avec sur dans que qui au merci "
    "el los las y es una por para con del se lo como su muy gracias "
    "il di che non per una sono della gli grazie "
    "het een van en ik je niet dat op te zijn met voor "
    "os um uma não com para por mais obrigado".split()
) - frozenset("a i in to as is on an of no so".split())
_LATIN = re.compile(r"[a-z]")


def looks_foreign(text: str) -> bool:
    """True for text mostly in another script (CJK, Cyrillic...) or with many European non-English
    function words. Training ham is English only: the classifier discounts content evidence for such mail."""
    sample = text[:2000].lower()
    letters = [c for c in sample if c.isalpha()]
    if len(letters) < 40:
        return False
    if sum(1 for c in letters if _LATIN.match(c) or "\u00c0" <= c <= "\u024f") < 0.5 * len(letters):
        return True
    words = _WORD.findall(sample)[:200]
    return sum(w in _FOREIGN for w in words) >= max(3, 0.12 * len(words))


def _text_part(facts: MessageFacts) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    words = _WORD.findall(normalise_text(facts.text))[:MAX_WORDS]
    subj = _WORD.findall(normalise_text(facts.subject))[:40]
    hashes = [_crc(words, 1), _crc(subj, 2)]
    if len(words) > 1:
        w = hashes[0]
        hashes.append((w[:-1] * np.uint64(1_000_003)) ^ w[1:] ^ np.uint64(0xB16))
    stream = " ".join(words)[:CHAR_CHARS]
    if len(stream) >= 4:
        cp = np.frombuffer(stream.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        p = np.uint64(1_000_003)
        hashes.append(((cp[:-3] * p + cp[1:-2]) * p + cp[2:-1]) * p + cp[3:] + np.uint64(0xC4A4))
    allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    if allh.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    idx, counts = np.unique(_slot(allh, DIM_TEXT), return_counts=True)
    val = (1.0 + np.log(counts)).astype(np.float32)
    val /= np.float32(np.linalg.norm(val))
    return idx, val


def _bucket(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else "4-9" if n <= 9 else "10+"


def header_tokens(facts: MessageFacts) -> tuple[list[str], list[str]]:
    """(generic, list) header facts as tokens; only facts that carry over from one mail source to another."""
    # Enron bodies carry no headers and their URLs were tokenised apart: a link count there would teach
    # "no links = Enron = probably spam". Count links only where a real message was parsed.
    generic = [f"links:{_bucket(len(facts.links))}"] if facts.headers else []
    hosts = [(_URL.match(u) or _URL.match("http://x")).group(1).lower() for u in facts.links[:50]]  # type: ignore[union-attr]
    if any(_IP_HOST.match(h) for h in hosts):
        generic.append("link_ip")
    if any(h.count(".") >= 4 for h in hosts):
        generic.append("link_deep_host")
    from_dom = facts.from_addr.rpartition("@")[2]
    if facts.reply_to and facts.reply_to.rpartition("@")[2] != from_dom:
        generic.append("reply_to_other_domain")
    if "@" in facts.from_name:
        generic.append("from_name_has_addr")
    subject = facts.subject.lower()
    if subject.startswith(("re:", "aw:", "sv:", "antw:")):
        generic.append("subject_re")
    if subject.startswith(("fw:", "fwd:", "wg:", "tr:")):
        generic.append("subject_fwd")
    # HTML-ness separates the 2002 corpora (plain-text lists vs HTML spam) far better than it separates
    # today's mail, where most ham is HTML: only the category and priority heads may use it.
    listy = [f"attach:{_bucket(len(facts.attachments))}"]
    if facts.headers:
        listy.append("html" if facts.html else "plain")
        if facts.html and len(facts.text) < 40:
            listy.append("html_no_text")
        for name in (
            "List-Unsubscribe",
            "List-Id",
            "X-Mailing-List",
            "List-Post",
            "Auto-Submitted",
            "X-Cron-Env",
            "In-Reply-To",
            "References",
            "Feedback-ID",
        ):
            if facts.has_header(name):
                listy.append("has:" + name.lower())
        listy.append("precedence:" + facts.header("Precedence").strip().lower()[:10])
        listy.append(f"rcpts:{_bucket(len(facts.to) + len(facts.cc))}")
        if _NOTIFY_LOCAL.match(facts.from_addr.partition("@")[0]):
            listy.append("from_automated")
        if is_social_domain(from_dom):
            listy.append("from_social")
        listy.append("hdrcat:" + (header_category(facts) or "none"))
        listy.append("from_tld:" + from_dom.rpartition(".")[2][:6])
    return generic, listy


def featurize(facts: MessageFacts) -> Sparse:
    """The sparse feature vector of one message, indices sorted and unique."""
    tidx, tval = _text_part(facts)
    generic, listy = header_tokens(facts)
    gidx = np.unique(_slot(_crc(generic, 3), DIM_GENERIC)) + GENERIC_START
    lidx = np.unique(_slot(_crc(listy, 4), DIM_LIST)) + LIST_START
    idx = np.concatenate([tidx, gidx, lidx])
    val = np.concatenate([tval, np.ones(gidx.size + lidx.size, np.float32)])
    return idx.astype(np.int64), val.astype(np.float32)


def pack(rows: list[Sparse]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Pad sparse rows into dense (N, K) index/value arrays; padding points at slot 0 with value 0."""
    width = max((r[0].size for r in rows), default=1) or 1
    idx = np.zeros((len(rows), width), np.int64)
    val = np.zeros((len(rows), width), np.float32)
    for i, (ri, rv) in enumerate(rows):
        idx[i, : ri.size] = ri
        val[i, : rv.size] = rv
    return idx, val


ENCODER_CHARS = (
    1500  # text cut before tokenising: a 14k-character mail costs 9 ms to tokenise whole, 1 ms cut
)


def encoder_text(facts: MessageFacts) -> str:
    """What the sentence encoder reads: subject and the author's own words, cut to ``ENCODER_CHARS``."""
    body = clean_body(facts.text[: ENCODER_CHARS * 4]) or facts.text
    return (facts.subject + "\n" + collapse_ws(body))[:ENCODER_CHARS]
