"""Action items: the sentences of a message that ask the reader to do something, with their deadline resolved
to a calendar date against the message's Date.
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_right

from gatewayd.analysis.facts import ActionItem
from gatewayd.analysis.text import clean_body, collapse_ws, sentence_spans, truncate

MAX_ACTIONS = 5
MAX_SCAN = 3_000  # characters of the author's own words searched for actions
MAX_ACTION_LEN = 200

_WEEKDAYS = {"monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2,
             "thursday": 3, "thu": 3, "thur": 3, "thurs": 3, "friday": 4, "fri": 4, "saturday": 5, "sat": 5,
             "sunday": 6, "sun": 6}
_MONTHS = {"january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
           "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
           "sep": 9, "sept": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12,
           "dec": 12}
_WD = (r"(?P<wd>monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
       r"mon|tues?|wed|thu(?:rs?)?|fri|sat|sun)")
_MON = (r"(?P<mon>january|february|march|april|may|june|july|august|september|october|november|december|"
        r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)")
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(?P<year>20\d\d))?"

_REQUEST = re.compile(
    r"\b(?:please|pls|kindly|could you|can you|would you|will you|would you mind|i need you to|"
    r"we need you to|"
    r"you need to|you must|make sure|be sure to|don'?t forget|do not forget|remember to|let me know|"
    r"i'?d like you to|need (?:your|you to)|action required|are you able to)\b")
_IMPERATIVE = re.compile(
    r"^(?:send|review|sign|submit|call|reply|respond|confirm|update|check|complete|pay|book|schedule|"
    r"prepare|share|forward|approve|fill(?: out| in)?|finish|fix|read|email|contact|ping|upload|return|"
    r"register|renew|bring|remember|note|join|attend|provide|get|make)\b")
_OBLIGATION = re.compile(r"\b(?:need(?:s)? to|must|should|have to|has to|is due|are due|due)\b")
# Substrings whose presence makes a sentence a candidate; found with str.find, which is far cheaper than
# running the patterns over the whole body.
_TRIGGERS = ("please", "pls", "kindly", "you", "sure", "forget", "remember", "let me know", "need", "must",
             "should", "have to", "has to", "due", "action required")

# Deadline expressions; each alternative is a named group so the resolver knows which one matched.
_DEADLINE = re.compile(
    r"\b(?:"
    r"(?P<iso>(?P<iy>20\d\d)-(?P<im>[01]?\d)-(?P<id>[0-3]?\d))"
    r"|(?P<dmy>" + _DAY + r"(?:\s+of)?\s+" + _MON + r"\.?" + _YEAR + r")"
    r"|(?P<mdy>" + _MON.replace("?P<mon>", "?P<mon2>") + r"\.?\s+"
    + _DAY.replace("?P<day>", "?P<day2>") + _YEAR.replace("?P<year>", "?P<year2>") + r")"
    r"|(?P<nextwd>next\s+" + _WD.replace("?P<wd>", "?P<wd2>") + r")"
    r"|(?P<tomorrow>tomorrow|tmrw)"
    r"|(?P<today>today|tonight|eod|end of (?:the )?day|cob|close of business|end of business)"
    r"|(?P<eow>end of (?:the |this )?week|eow)"
    r"|(?P<eom>end of (?:the |this )?month)"
    r"|(?P<nextweek>next week)"
    r"|(?P<inn>in\s+(?P<n>\d{1,2}|one|two|three|four|five|six|seven)\s+(?P<unit>days?|weeks?))"
    r"|(?P<bywd>(?:by|before|until|till|on|due|no later than|this)\s+" + _WD + r")"
    r")\b")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def _safe_date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _upcoming(base: dt.date, weekday: int, *, strictly_after: bool) -> dt.date:
    ahead = (weekday - base.weekday()) % 7
    if ahead == 0 and strictly_after:
        ahead = 7
    return base + dt.timedelta(days=ahead)


def _month_day(base: dt.date, month: int, day: int, year: str | None) -> dt.date | None:
    if year:
        return _safe_date(int(year), month, day)
    # No year: the next such date on or after the message date.
    found = _safe_date(base.year, month, day)
    if found is not None and found < base:
        found = _safe_date(base.year + 1, month, day)
    return found


def resolve_deadline(match: re.Match[str], base: dt.date) -> dt.date | None:
    """The date a ``_DEADLINE`` match means, counted from ``base`` (the message's date)."""
    g = match.group
    if g("iso"):
        return _safe_date(int(g("iy")), int(g("im")), int(g("id")))
    if g("dmy"):
        return _month_day(base, _MONTHS[g("mon").lower()], int(g("day")), g("year"))
    if g("mdy"):
        return _month_day(base, _MONTHS[g("mon2").lower()], int(g("day2")), g("year2"))
    if g("nextwd"):
        return _upcoming(base, _WEEKDAYS[g("wd2").lower()], strictly_after=True)
    if g("tomorrow"):
        return base + dt.timedelta(days=1)
    if g("today"):
        return base
    if g("eow"):
        return _upcoming(base, 4, strictly_after=False) if base.weekday() <= 4 else base
    if g("eom"):
        first_next = _safe_date(base.year + (base.month == 12), base.month % 12 + 1, 1)
        return first_next - dt.timedelta(days=1) if first_next else None
    if g("nextweek"):
        return _upcoming(base, 0, strictly_after=True)
    if g("inn"):
        raw = g("n").lower()
        n = int(raw) if raw.isdigit() else _NUMBERS[raw]
        return base + dt.timedelta(days=n * (7 if g("unit").lower().startswith("week") else 1))
    if g("bywd"):
        # "by Friday" said on a Friday means today.
        return _upcoming(base, _WEEKDAYS[g("wd").lower()], strictly_after=False)
    return None


def find_deadline(sentence: str, base: dt.date) -> dt.date | None:
    """The first deadline in ``sentence`` resolved against ``base``, or None."""
    for m in _DEADLINE.finditer(sentence.lower()):
        due = resolve_deadline(m, base)
        if due is not None:
            return due
    return None


def find_actions(text: str, date: dt.datetime | dt.date | None) -> tuple[ActionItem, ...]:
    """Requests in ``text`` ("please ...", "could you ...", "make sure ...", an imperative with a
    deadline, an obligation with a deadline), at most ``MAX_ACTIONS``, each with its due date resolved
    against ``date`` (the message's Date; today when None). Quoted replies and signatures are ignored."""
    return actions_in_body(clean_body(text, limit=MAX_SCAN), date)


def actions_in_body(body: str, date: dt.datetime | dt.date | None) -> tuple[ActionItem, ...]:
    """``find_actions`` for a body already passed through ``clean_body`` (only its first ``MAX_SCAN``
    characters are searched)."""
    if date is None:
        base = dt.date.today()
    elif isinstance(date, dt.datetime):
        base = date.date()
    else:
        base = date
    flat = collapse_ws(body[:MAX_SCAN])
    lower = flat.lower()
    spans = sentence_spans(flat)
    starts = [a for a, _ in spans]
    candidates: set[int] = set()
    for trigger in _TRIGGERS:
        i = lower.find(trigger)
        while i >= 0:
            candidates.add(bisect_right(starts, i) - 1)
            i = lower.find(trigger, i + len(trigger))
    found: list[ActionItem] = []
    for index, (a, b) in enumerate(spans):
        sentence = lower[a:b]
        if len(sentence) > 1000:  # not a sentence: a pasted blob
            continue
        imperative = _IMPERATIVE.match(sentence) is not None and not sentence.endswith("?")
        if index not in candidates and not imperative:
            continue
        request = _REQUEST.search(sentence) is not None
        obligation = not request and _OBLIGATION.search(sentence) is not None
        if not (request or imperative or obligation):
            continue
        due = find_deadline(sentence, base)
        if request or due is not None:
            found.append(ActionItem(text=truncate(flat[a:b].strip(), MAX_ACTION_LEN), due=due))
            if len(found) >= MAX_ACTIONS:
                break
    return tuple(found)
