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
_WS = re.compile(r"\s+")
# A sentence ends at . ! ? (optionally closed by quotes/brackets) followed by whitespace, or at CJK
# full-width terminators, which need no following space.
_CJK_END = "\u3002\uff01\uff1f"  # ideographic full stop, full-width ! and ?
_CJK_CLOSE = "\u300d\u300f\uff09"  # closing corner brackets, full-width )
_QUOTE_CLOSE = "\"'\u201d\u2019)]"
_SENTENCE_END = re.compile(rf"(?<=[.!?\u2026])[{re.escape(_QUOTE_CLOSE)}]*\s+"
                           rf"|(?<=[{_CJK_END}])[{_CJK_CLOSE}\"\u201d]*\s*")
_ABBREV = re.compile(r"(?:\b(?:mr|mrs|ms|dr|prof|sr|jr|st|vs|etc|inc|ltd|co|no|fig|approx|e\.g|i\.e|cf)"
                     r"|\b[a-z])\.$", re.IGNORECASE)


def strip_quotes(text: str) -> str:
    """``text`` without quoted replies: ``>`` lines and everything from an "On ... wrote:" / Outlook
    original-message marker onwards (the quoted original is what follows such a marker)."""
    text = text[:MAX_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    cut = len(text)
    for pattern in (_ON_WROTE, _JA_WROTE, _ORIGINAL, _OUTLOOK_HDR):
        m = pattern.search(text, 0, cut)
        if m:
            cut = min(cut, m.start())
    text = text[:cut]
    return "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(">"))


def strip_signature(text: str) -> str:
    """``text`` without its signature: from the ``-- `` delimiter, or from a sign-off line ("Best regards,",
    "Thanks,", "Sent from my iPhone") found in the last lines, onwards."""
    m = _SIG_DASHES.search(text)
    if m:
        text = text[: m.start()]
    lines = text.rstrip().split("\n")
    # A sign-off only counts near the end; "Thanks," at the top of a long mail is a greeting.
    start = max(1, len(lines) - 8)
    for i in range(start, len(lines)):
        if _SIGN_OFF.match(lines[i]):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def strip_greeting(text: str) -> str:
    """``text`` without a salutation line ("Hi Ann,") at its top."""
    stripped = text.lstrip("\n")
    first, sep, rest = stripped.partition("\n")
    if sep and _GREETING.match(first):
        return rest
    return stripped


def clean_body(text: str) -> str:
    """The author's own words: quotes, signature, greeting and leftover HTML-to-text markup removed;
    line structure kept."""
    body = strip_greeting(strip_signature(strip_quotes(text)))
    return _MARKUP.sub(" ", body)


def collapse_ws(text: str) -> str:
    """All runs of whitespace (line breaks included) as one space, ends trimmed."""
    return _WS.sub(" ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace collapsed), for Latin and CJK punctuation. Abbreviations such
    as "e.g." or "Dr." do not end a sentence."""
    flat = collapse_ws(text[:MAX_CHARS])
    sentences: list[str] = []
    start = 0
    pending = ""
    for m in _SENTENCE_END.finditer(flat):
        piece = flat[start:m.start()] + flat[m.start():m.end()].rstrip()
        start = m.end()
        if _ABBREV.search(piece.rstrip(_QUOTE_CLOSE)):
            pending += piece + " "
            continue
        sentence = (pending + piece).strip()
        pending = ""
        if sentence:
            sentences.append(sentence)
    tail = (pending + flat[start:]).strip()
    if tail:
        sentences.append(tail)
    return sentences


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


def summarize_lead(text: str, limit: int = 300) -> str:
    """A lead summary: the first one to three sentences of the author's own words, at most ``limit``
    characters. Quotes, signatures and greetings are dropped; a cut never splits a word without "…"."""
    sentences = [s for s in split_sentences(clean_body(text)) if not _SIGN_OFF.fullmatch(s)]
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
