"""What the rules match against: word lists, precompiled patterns, known domains, URL and address helpers.

Kept apart from the rules themselves so the tables stay readable; everything here is pure and bounded.
"""

from __future__ import annotations

import ipaddress
import math
import re
from urllib.parse import urlsplit


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "go"})


def registrable(host: str) -> str:
    """An approximation of the registrable domain ("mail.example.co.uk" -> "example.co.uk") without a
    public-suffix list: two labels, three when the second-level label is a common ccTLD second level."""
    host = host.strip().strip(".").lower()
    labels = host.split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].strip().strip(">").lower() if "@" in addr else ""


def host_of(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        return (parts.hostname or "").lower()
    except ValueError:
        return ""


def is_ip(host: str) -> bool:
    if not host or not (host[-1].isdigit() or ":" in host):  # a name ends in a TLD, never a digit
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.replace(".", "").isdigit() and host.count(".") == 3  # 0-padded or odd dotted quads
    return True


# --- lexicons ---------------------------------------------------------------------------------------
PUNCT = b"!\"#%&()*+,./:;<=>?[\\]^_`{|}~\r\n\t"
PUNCT_TABLE = bytes.maketrans(PUNCT, b" " * len(PUNCT))


def words_of(text: str) -> list[str]:
    """The words of ``text``: split at whitespace and ASCII punctuation other than ' $ @ - which belong to
    words here ("don't", "$100", "sign-in"). Done on UTF-8 bytes: str.translate is slow on non-ASCII text."""
    raw = text.encode("utf-8", "surrogatepass").translate(PUNCT_TABLE)
    return raw.decode("utf-8", "surrogatepass").split()


class Lexicon:
    """Words and phrases looked up through the message's word set: a phrase is searched in the text only
    when its rarest word occurs at all, so a lexicon costs set look-ups, not a scan per entry."""

    def __init__(self, *phrases: str) -> None:
        self.entries = tuple((max(words_of(p), key=len), p, " " not in p) for p in phrases)

    def hits(self, words: frozenset[str], lower: str) -> frozenset[str]:
        return frozenset(p for key, p, single in self.entries if key in words and (single or p in lower))


SPAM_WORDS = Lexicon(
    "viagra", "cialis", "lottery", "lotto", "jackpot", "you won", "you've won", "you have won", "winner",
    "million dollars", "million usd", "inheritance", "beneficiary", "casino", "bitcoin", "cryptocurrency",
    "investment opportunity", "guaranteed", "risk-free", "risk free", "100% free", "free money", "free gift",
    "cash bonus", "earn $", "make money", "work from home", "act now", "limited time", "click here",
    "buy now", "order now", "cheap", "lowest price", "weight loss", "no credit check", "miracle", "nigeria",
    "nigerian", "wire transfer", "western union", "dear friend", "congratulations", "meet singles",
    "hot singles", "unsubscribe")
LURE_PHRASES = Lexicon(
    "verify your account", "verify your identity", "verify your email", "verify your information",
    "confirm your account", "confirm your identity", "confirm your password", "confirm your details",
    "suspended", "suspension", "unusual activity", "unusual sign-in", "update your payment",
    "update your billing", "update your account", "account will be closed", "account has been disabled",
    "account has been limited", "validate your", "reset your password", "your account is locked")
# Words every newsletter and service mail uses; they only add to a lure phrase.
CREDENTIAL_WORDS = Lexicon("password", "locked", "login", "log in", "sign in", "signin", "sign-in",
                           "security alert")
NEWSLETTER_WORDS = Lexicon("unsubscribe", "newsletter", "view in browser", "view it in your browser",
                           "view in your browser", "manage preferences", "manage your preferences",
                           "manage your subscription", "monthly digest", "weekly digest")
TRANSACTION_WORDS = Lexicon("receipt", "order", "invoice", "shipping", "shipped", "shipment", "delivery",
                            "delivered", "payment", "paid", "confirmation", "confirmed", "booking",
                            "reservation", "tracking", "refund", "purchase", "statement")
SOCIAL_PHRASES = Lexicon("mentioned you", "friend request", "tagged you", "commented on", "new follower",
                         "followed you", "follows you", "liked your", "reacted to", "connection request",
                         "invitation to connect", "wants to connect", "replied to your", "shared a post",
                         "endorsed you", "viewed your profile")
URGENT_WORDS = Lexicon("urgent", "urgently", "asap", "as soon as possible", "deadline", "today",
                       "immediately", "time-sensitive", "time sensitive", "action required", "eod",
                       "end of day",
                       "critical", "right away")
MONEY = re.compile(r"[$€£]\s?\d{1,3}(?:[,.]\d{3}){2,}")
BULK_MAILERS = re.compile(
    r"phpmailer|atomic mail|sendblaster|mass ?mail|groupmail|bulk ?mail|maxbulk|turbo[- ]?mailer|"
    r"super ?mailer|easy ?mail ?pro|gammadyne|mailking|advanced mass sender|the bat! ?v?1\.", re.IGNORECASE)
HIDDEN_STYLES = ("display:none", "visibility:hidden", "font-size:0;", "font-size:0px", "font-size:1px",
                  "font-size:0\"", "opacity:0;", "opacity:0\"", "max-height:0", "mso-hide:all")
IMG = re.compile(r"<img\b", re.IGNORECASE)
ANCHOR = re.compile(r"<a\b[^>]{0,500}?\bhref\s*=\s*[\"']?([^\"'\s>]{1,2000})[^>]{0,500}>(.{0,300}?)</a\s*>",
                     re.IGNORECASE | re.DOTALL)
TAG = re.compile(r"<[^>]{0,500}>")
DOMAIN_IN_TEXT = re.compile(r"(?:https?://)?((?:[a-z0-9-]{1,63}\.)+[a-z]{2,24})\b", re.IGNORECASE)
EMAIL_IN_TEXT = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
SHORTENERS = frozenset({"bit.ly", "tinyurl.com", "goo.gl", "t.co", "ow.ly", "is.gd", "buff.ly", "rebrand.ly",
                         "cutt.ly", "shorturl.at", "tiny.cc", "rb.gy", "t.ly", "s.id", "bl.ink", "lnkd.in",
                         "v.gd", "shorte.st", "adf.ly", "tr.im", "qrco.de"})
BRANDS: dict[str, tuple[str, ...]] = {
    "paypal": ("paypal.com", "paypal.me"),
    "ebay": ("ebay.com", "ebay.co.uk", "ebay.de"),
    "apple": ("apple.com", "icloud.com"),
    "icloud": ("apple.com", "icloud.com"),
    "microsoft": ("microsoft.com", "outlook.com", "live.com", "office.com", "office365.com"),
    "office 365": ("microsoft.com", "office.com", "office365.com"),
    "outlook": ("microsoft.com", "outlook.com", "live.com"),
    "amazon": ("amazon.com", "amazon.co.uk", "amazon.de", "amazonses.com"),
    "netflix": ("netflix.com",),
    "google": ("google.com", "gmail.com"),
    "docusign": ("docusign.com", "docusign.net"),
    "dhl": ("dhl.com", "dhl.de"),
    "fedex": ("fedex.com",),
}
BRAND_RE = re.compile(r"\b(" + "|".join(re.escape(b) for b in BRANDS) + r"|bank)\b", re.IGNORECASE)
DANGEROUS_EXT = frozenset({"exe", "scr", "js", "jse", "vbs", "vbe", "bat", "cmd", "com", "pif", "jar", "iso",
                            "img", "hta", "wsf", "lnk", "ps1", "msi", "cpl", "reg", "vhd", "one"})
ARCHIVE_EXT = frozenset({"zip", "rar", "7z", "gz", "tgz", "ace", "arj", "cab"})

# --- categories ---------------------------------------------------------------------------------------
NOREPLY = re.compile(r"^(?:no-?reply|do-?not-?reply|donotreply|notifications?|alerts?|notify|mailer-daemon|"
                      r"postmaster|system|automated|bounces?)\b", re.IGNORECASE)
ALERT_WORDS = re.compile(r"\b(?:alert|notification|reminder|security|sign-?in|status|failed|succeeded|"
                          r"has been|new login|warning|digest|report for)\b", re.IGNORECASE)
SOCIAL_DOMAINS = frozenset({"facebook.com", "facebookmail.com", "linkedin.com", "twitter.com", "x.com",
                             "instagram.com", "mastodon.social", "threads.net", "tiktok.com", "reddit.com",
                             "redditmail.com", "pinterest.com", "bsky.app", "discord.com", "youtube.com"})
TRANSACTION_SUBJECT = re.compile(r"\b(?:receipt|order|invoice|shipping|shipped|shipment|delivery|delivered|"
                                  r"payment|paid|confirm(?:ed|ation)?|booking|reservation|tracking|refund|"
                                  r"purchase|renewal|statement)\b", re.IGNORECASE)
NUMBER = re.compile(r"\d\d\d|[$€£] ?\d")
