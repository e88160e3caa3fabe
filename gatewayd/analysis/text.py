"""Plain-text helpers shared by the rules and the model engine: reply/signature stripping, sentence splitting.

Everything here is pure and bounded: input is cut to ``MAX_CHARS`` first and every pattern is linear, so a
hostile body costs no more than a long ordinary one.
"""

from __future__ import annotations

import re

MAX_CHARS = 20_000  # characters of body text the helpers look at

# A line that opens a quoted original: "On Tue, 3 Mar 2026, Ann <a@b> wrote:" (may wrap onto two lines),
# the Outlook separator, or an Outlook header block ("From: ..." followed by "Sent:" / "Date:").
_ON_WROTE = re.compile(r"^\s*(?:On|Am|Le|El|Il|Op)\s[^\n]{0,300}?(?:\n[^\n]{0,200}?)?"
                       r"(?:wrote|schrieb|a écrit|escribió|ha scritto|schreef)\s*:\s*$",
                       re.IGNORECASE | re.MULTILINE)
_JA_WROTE = re.compile(r"^[^\n]{0,200}(?:のメッセージ|が書きました|wrote)[:\uff1a]\s*$", re.MULTILINE)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(?:Original Message|Forwarded message|Ursprüngliche Nachricht)"
                       r"\s*-{2,}",
                       re.IGNORECASE | re.MULTILINE)
_OUTLOOK_HDR = re.compile(r"^\s*\**From:\**\s[^\n]{0,300}\n\s*\**(?:Sent|Date):\**\s",
                          re.IGNORECASE | re.MULTILINE)
_SIG_DASHES = re.compile(r"^-- ?$", re.MULTILINE)
_SIGN_OFF = re.compile(
    r"^\s*(?:best|kind|warm|many thanks|thanks|thank you|regards|best regards|kind regards|warm regards|"
    r"cheers|sincerely|yours sincerely|yours truly|yours|all the best|talk soon|cordialement|"
    r"mit freundlichen grüßen|viele grüße|liebe grüße|gruß|saludos|un saluto|よろしくお願いします|"
    r"よろしくお願いいたします)[\s,.!、。]*$|^\s*sent from my [^\n]{1,40}$",
    re.IGNORECASE | re.MULTILINE)
_GREETING = re.compile(r"^\s*(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)|hallo|bonjour|hola)\b"
                       r"[^\n]{0,60}[,!:]?\s*$"
                       # Japanese addressee lines: "<name>様", "さん", "殿", "先生"
                       r"|^[^\n]{1,20}(?:\u69d8|\u3055\u3093|\u6bbf|\u5148\u751f)[\u3001,]?\s*$",
                       re.IGNORECASE)
_MARKUP = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|[*+-][ \t]+|\d{1,3}\.[ \t]+)|[|*_`]{2,}"
                     r"|^[ \t]*[-=_*]{3,}[ \t]*$", re.MULTILINE)
_MARKUP_CHARS = ("#", "**", "__", "|", "---", "* ", "- ", "==", "``")
# A sentence ends at . ! ? (optionally closed by quotes/brackets) followed by whitespace, or at CJK
# full-width terminators, which need no following space. Patterns start with a character class so the
# engine skips ahead quickly.
_CJK_END = "\u3002\uff01\uff1f"  # ideographic full stop, full-width ! and ?
_CJK_CLOSE = "\u300d\u300f\uff09"  # closing corner brackets, full-width )
_QUOTE_CLOSE = "\"'\u201d\u2019)]"
_SENTENCE_END = re.compile(rf"[.!?\u2026{_CJK_END}]+[{re.escape(_QUOTE_CLOSE)}{_CJK_CLOSE}]*")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "inc", "ltd",
                            "co", "no", "fig", "approx", "e.g", "i.e", "cf", "z.b", "ca"})
_QUOTE_WORDS = ("wrote", "schrieb", "écrit", "escribió", "scritto", "schreef")
# "のメッセージ" (message of), "書きました" (wrote)
_JA_WORDS = ("\u306e\u30e1\u30c3\u30bb\u30fc\u30b8", "\u66f8\u304d\u307e\u3057\u305f")
_ORIGINAL_WORDS = ("original", "forwarded", "ursprüngliche")


def _normalise(text: str) -> str:
    return text[:MAX_CHARS].replace("\r\n", "\n").replace("\r", "\n")


def strip_quotes(text: str) -> str:
    """``text`` without quoted replies: ``>`` lines and everything from an "On ... wrote:" / Outlook
    original-message marker onwards (the quoted original is what follows such a marker)."""
    text = _normalise(text)
    folded = text.lower()
    # Substring checks first: the patterns only run on mail that has a marker's key word at all.
    patterns: list[re.Pattern[str]] = []
    if any(w in folded for w in _QUOTE_WORDS):
        patterns += (_ON_WROTE, _JA_WROTE)
    elif any(w in text for w in _JA_WORDS):
        patterns.append(_JA_WROTE)
    if "--" in text and any(w in folded for w in _ORIGINAL_WORDS):
        patterns.append(_ORIGINAL)
    if "from:" in folded:
        patterns.append(_OUTLOOK_HDR)
    cut = len(text)
    for pattern in patterns:
        m = pattern.search(text, 0, cut)
        if m:
            cut = m.start()
    text = text[:cut]
    if ">" not in text:
        return text
    return "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(">"))


def strip_signature(text: str) -> str:
    """``text`` without its signature: from the ``-- `` delimiter, or from a sign-off line ("Best regards,",
    "Thanks,", "Sent from my iPhone") found in the last lines, onwards."""
    if text.startswith("--") or "\n--" in text:
        m = _SIG_DASHES.search(text)
        if m:
            text = text[: m.start()]
    text = text.rstrip()
    # A sign-off only counts near the end; "Thanks," at the top of a long mail is a greeting.
    tail = text.rsplit("\n", 8)
    head_len = len(text) - sum(len(t) + 1 for t in tail[1:]) if len(tail) > 1 else len(text)
    offset = head_len
    for line in tail[1:]:
        if _SIGN_OFF.match(line):
            return text[:offset]
        offset += len(line) + 1
    return text


def strip_greeting(text: str) -> str:
    """``text`` without a salutation line ("Hi Ann,") at its top."""
    stripped = text.lstrip("\n")
    first, sep, rest = stripped.partition("\n")
    if sep and len(first) < 80 and _GREETING.match(first):
        return rest
    return stripped


def clean_body(text: str, limit: int = MAX_CHARS) -> str:
    """The author's own words, at most ``limit`` characters: quotes, signature, greeting and leftover
    HTML-to-text markup removed; line structure kept."""
    body = strip_greeting(strip_signature(strip_quotes(text)))[:limit]
    if any(c in body for c in _MARKUP_CHARS):
        body = _MARKUP.sub(" ", body)
    return body


def collapse_ws(text: str) -> str:
    """All runs of whitespace (line breaks included) as one space, ends trimmed."""
    return " ".join(text.split())


def _is_abbreviation(flat: str, end: int) -> bool:
    """True if the "." ending at ``end`` closes an abbreviation or an initial, not a sentence."""
    if flat[end - 1] != ".":
        return False
    start = flat.rfind(" ", max(0, end - 8), end) + 1
    word = flat[start:end - 1].lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def sentence_spans(flat: str, max_sentences: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of the sentences of ``flat`` (whitespace already collapsed), for Latin and CJK
    punctuation; abbreviations such as "e.g." or "Dr." do not end a sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    size = len(flat)
    for m in _SENTENCE_END.finditer(flat):
        end = m.end()
        # Latin punctuation ends a sentence only before a space ("3.5", "example.org" do not).
        if end < size and flat[end] != " " and flat[m.start()] not in _CJK_END:
            continue
        if end - start < 2 or _is_abbreviation(flat, m.start() + 1):
            continue
        spans.append((start, end))
        start = end + 1 if end < len(flat) and flat[end] == " " else end
        if max_sentences is not None and len(spans) >= max_sentences:
            return spans
    if start < len(flat) and flat[start:].strip():
        spans.append((start, len(flat)))
    return spans


def split_sentences(text: str, max_sentences: int | None = None) -> list[str]:
    """Sentences of ``text`` (whitespace collapsed), for Latin and CJK punctuation. Abbreviations such
    as "e.g." or "Dr." do not end a sentence."""
    flat = collapse_ws(text[:MAX_CHARS])
    return [s for s in (flat[a:b].strip() for a, b in sentence_spans(flat, max_sentences)) if s]


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters; a cut ends in "…", at a word boundary when there is
    one in the last fifth (CJK text has none and is cut between characters)."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= (limit * 4) // 5:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def lead_of(body: str, limit: int = 300) -> str:
    """The lead summary of a body already passed through ``clean_body`` (see ``summarize_lead``)."""
    sentences = [s for s in split_sentences(body, max_sentences=6) if not _SIGN_OFF.fullmatch(s)]
    if not sentences:
        return ""
    out = ""
    for sentence in sentences[:3]:
        sep = "" if not out or out[-1] in _CJK_END + _CJK_CLOSE else " "
        candidate = out + sep + sentence
        if len(candidate) > limit:
            break
        out = candidate
    return out or truncate(sentences[0], limit)


def summarize_lead(text: str, limit: int = 300) -> str:
    """A lead summary: the first one to three sentences of the author's own words, at most ``limit``
    characters. Quotes, signatures and greetings are dropped; a cut never splits a word without "…"."""
    return lead_of(clean_body(text, limit=max(limit * 8, 1000)), limit)
