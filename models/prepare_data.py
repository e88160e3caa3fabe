"""Unpack, normalise, de-duplicate, weakly label and split the training corpora (training time only).

Usage: python models/prepare_data.py [--data ../shared/data] [--work /tmp/corpora] [--out PICKLE]

Produces a pickle of records ``{"facts": MessageFacts, "source", "folder", "split", "spam", "phishing",
"category", "important"}``. The rules that make the weak labels are in this file and in models/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import mailbox
import pickle
import random
import re
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.analysis.facts import MessageFacts
from gatewayd.intel.labels import weak_category, weak_priority
from gatewayd.mime import extract_facts

# SpamAssassin's own masking of the recipient's identity; left in, a model learns "this is SA ham".
_SA_QUIRKS = [
    (re.compile(r"spamassassin\.taint\.org", re.I), "example.org"),
    (re.compile(r"\bzzzz(?:-\w+)?@", re.I), "user@"),
    (re.compile(r"\bzzzz\b", re.I), "user"),
    (re.compile(r"netnoteinc\.com", re.I), "example.net"),
    (re.compile(r"slashnull\.org", re.I), "example.net"),
    (re.compile(r"jmason\.org", re.I), "example.net"),
]
_DROP_HEADERS = {
    "received",
    "delivered-to",
    "return-path",
    "x-spam-status",
    "x-spam-level",
    "x-spam-flag",
    "x-spam-checker-version",
    "x-spam-report",
    "x-spam-score",
    "x-virus-scanned",
    "x-loop",
    "envelope-to",
    "x-original-to",
    "x-fetchmail-warning",
}
_TOKEN = re.compile(r"[a-z]{3,}")


def _scrub(value: str) -> str:
    for pattern, repl in _SA_QUIRKS:
        value = pattern.sub(repl, value)
    return value


def normalise(facts: MessageFacts) -> MessageFacts:
    """Drop transport headers (Received, Delivered-To, spam-filter stamps); mask corpus-specific addresses."""
    headers = tuple((k, _scrub(v)) for k, v in facts.headers if k.lower() not in _DROP_HEADERS)
    return replace(
        facts,
        headers=headers,
        subject=_scrub(facts.subject),
        from_addr=_scrub(facts.from_addr),
        reply_to=_scrub(facts.reply_to),
        to=tuple(_scrub(a) for a in facts.to),
        cc=tuple(_scrub(a) for a in facts.cc),
        text=_scrub(facts.text),
        html=_scrub(facts.html),
        links=tuple(_scrub(u) for u in facts.links),
    )


def body_key(facts: MessageFacts) -> str:
    """Near-duplicate key: first 60 alphabetic tokens of subject + body, lower-cased (Enron is tokenised)."""
    tokens = _TOKEN.findall((facts.subject + " " + facts.text).lower())[:60]
    return hashlib.sha1(" ".join(tokens).encode()).hexdigest()


def enron_facts(path: Path) -> MessageFacts:
    raw = path.read_text("latin-1")
    first, _, body = raw.partition("\n")
    subject = first[len("Subject:") :].strip() if first.startswith("Subject:") else ""
    date = None
    m = re.match(r"\d+\.(\d{4}-\d{2}-\d{2})\.", path.name)
    if m:
        date = dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.UTC)
    return MessageFacts(
        message_id=path.name,
        subject=subject,
        from_addr="",
        from_name="",
        reply_to="",
        to=(),
        cc=(),
        date=date,
        headers=(),
        text=body,
        html="",
        links=(),
        attachments=(),
        size=len(raw),
    )


def _read_mail(path: Path) -> list[MessageFacts]:
    """Every message in a folder of RFC 822 files (recursively) or an mbox file."""
    if path.is_dir():
        return [extract_facts(p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()]
    return [extract_facts(m.as_bytes()) for m in mailbox.mbox(str(path))]


def _unpack(data: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for archive in sorted(data.glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")


def _time_split(records: list[dict], val_share: float) -> None:
    """Last ``val_share`` of a group by date goes to validation (later mail: an honest proxy for drift)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

    def when(r: dict) -> dt.datetime:
        d = r["facts"].date
        if d is None:
            return epoch
        return d if d.tzinfo else d.replace(tzinfo=dt.UTC)

    records.sort(key=when)
    cut = int(len(records) * (1 - val_share))
    for i, r in enumerate(records):
        r["split"] = "train" if i < cut else "val"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/corpora")
    ap.add_argument("--out", default="/tmp/corpora/prepared.pkl")
    for kind in ("ham", "spam", "phishing"):
        ap.add_argument(
            f"--extra-{kind}",
            action="append",
            default=[],
            metavar="PATH",
            help=f"more {kind}: a folder of RFC 822 files or an mbox (repeatable); split by date",
        )
    args = ap.parse_args()
    work = Path(args.work)
    if not (work / "spamassassin_stdlib").exists():
        _unpack(Path(args.data), work)

    groups: dict[str, list[dict]] = collections.defaultdict(list)
    sa = work / "spamassassin_stdlib"
    for folder in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        for path in sorted((sa / folder).iterdir()):
            facts = normalise(extract_facts(path.read_bytes()))
            spam = folder.startswith("spam")
            groups[f"sa/{folder}"].append(
                {"facts": facts, "source": "spamassassin", "folder": folder, "spam": spam, "phishing": False}
            )
    for path in sorted((work / "nazario_phishing").glob("*.mbox")):
        for msg in mailbox.mbox(str(path)):
            facts = normalise(extract_facts(msg.as_bytes()))
            groups["nazario"].append(
                {"facts": facts, "source": "nazario", "folder": path.name, "spam": True, "phishing": True}
            )
    for kind in ("ham", "spam", "phishing"):  # a site's own mail: the best cure for the corpora's age
        for source in getattr(args, f"extra_{kind}"):
            for facts in _read_mail(Path(source)):
                groups[f"extra/{kind}/{source}"].append(
                    {
                        "facts": normalise(facts),
                        "source": "extra",
                        "folder": f"{kind}:{source}",
                        "spam": kind != "ham",
                        "phishing": kind == "phishing",
                    }
                )
    enron = work / "enron_spam"
    for sub in sorted(p for p in enron.iterdir() if p.is_dir()):
        for label in ("ham", "spam"):
            for path in sorted((sub / label).iterdir()):
                groups[f"enron/{sub.name}/{label}"].append(
                    {
                        "facts": enron_facts(path),
                        "source": "enron",
                        "folder": f"{sub.name}/{label}",
                        "spam": label == "spam",
                        "phishing": False,
                    }
                )

    # De-duplicate across every set; headered sources first: the SA original beats Enron's re-processed copy.
    seen: set[str] = set()
    dropped = collections.Counter()
    order = [k for k in groups if not k.startswith("enron")] + [k for k in groups if k.startswith("enron")]
    for key in order:
        kept = []
        for r in groups[key]:
            h = body_key(r["facts"])
            if h in seen:
                dropped[key] += 1
                continue
            seen.add(h)
            kept.append(r)
        groups[key] = kept

    # Split: Enron by user (enron6 = validation, never seen in training); headered sets by time (last 30 %).
    records: list[dict] = []
    for key, rs in groups.items():
        if key.startswith("enron"):
            for r in rs:
                r["split"] = "val" if "/enron6/" in key + "/" else "train"
        else:
            _time_split(rs, 0.3)
        records.extend(rs)
    for r in records:
        f = r["facts"]
        r["category"] = weak_category(f) if not r["spam"] else None
        r["important"] = (not r["spam"]) and weak_priority(f)
    random.Random(7).shuffle(records)
    with open(args.out, "wb") as fh:
        pickle.dump(records, fh)
    stats = collections.Counter((r["source"], r["split"], "spam" if r["spam"] else "ham") for r in records)
    for k in sorted(stats):
        print(*k, stats[k])
    print("duplicates dropped:", dict(dropped))
    cats = collections.Counter((r["split"], r["category"]) for r in records if r["category"])
    print("categories:", dict(sorted(cats.items())))
    print("important:", collections.Counter((r["split"], r["important"]) for r in records))


if __name__ == "__main__":
    main()
