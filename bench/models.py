"""Benchmark of the full model analysis (cascade, summary, actions): msg/s, latency, stage shares, RSS.

Usage: .venv/bin/python bench/models.py [--corpus /tmp/corpora] [--n 2000] [--threads 1 2]

The corpus is a mix of raw messages: SpamAssassin ham/spam, Nazario phishing and Enron bodies as unpacked by
models/prepare_data.py (any folder of RFC 822 files works). Parsing is done before timing. Each thread count
runs in its own process so RSS is measured with only that configuration loaded.
Throughput: one ``classify_many`` of all messages (the CLI's path), cache off. Latency (call to verdict, one
message per call as on the SMTP path, cache off): 8 closed-loop senders (saturation), an open loop at
``--rate`` msg/s (the target load), and serial calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.analysis.facts import MessageFacts
from gatewayd.mime import extract_facts


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_corpus(root: Path, n: int) -> list[MessageFacts]:
    raws: list[bytes] = []
    sa = root / "spamassassin_stdlib"
    for folder in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        if (sa / folder).is_dir():
            raws += [p.read_bytes() for p in sorted((sa / folder).iterdir())]
    for mbox in sorted((root / "nazario_phishing").glob("*.mbox")):
        raws += [m.as_bytes() for m in mailbox.mbox(str(mbox))]
    enron = root / "enron_spam"
    if enron.is_dir():
        for sub in sorted(p for p in enron.iterdir() if p.is_dir()):
            for label in ("ham", "spam"):
                files = sorted((sub / label).iterdir())[:400]
                raws += [b"Content-Type: text/plain; charset=latin-1\n" + p.read_bytes() for p in files]
    if not raws:  # no corpora unpacked: the 30 hand-written check-set messages, repeated (cache is off)
        print(f"no corpus under {root}: using models/checkset.jsonl", file=sys.stderr)
        checkset = Path(__file__).resolve().parents[1] / "models" / "checkset.jsonl"
        lines = checkset.read_text().splitlines()
        rows = [json.loads(line)["raw"].encode() for line in lines if line.strip()]
        raws = rows * (n // len(rows) + 1)
    random.Random(1).shuffle(raws)
    return [extract_facts(r) for r in raws[:n]]


async def run_one(threads: int, corpus: Path, n: int, models_dir: str, rate: float) -> dict[str, object]:
    from gatewayd import intel
    from gatewayd.settings import AnalysisSection

    facts = load_corpus(corpus, n)
    base_rss = rss_mb()
    settings = AnalysisSection(
        classifier="models",
        models_dir=models_dir,
        threads=threads,
        max_batch=32,
        batch_wait=0.002,
        cache_size=0,
    )
    clf = intel.build_classifier(settings)
    loaded_rss = rss_mb()
    await clf.classify_many(facts[:64])  # warm-up: first-run allocations, lazy init
    t0 = time.perf_counter()
    verdicts = await clf.classify_many(facts)
    bulk_s = time.perf_counter() - t0
    stages: dict[str, int] = {}
    for v in verdicts:
        stages[v.stage] = stages.get(v.stage, 0) + 1
    await clf.close()

    settings = AnalysisSection(
        classifier="models",
        models_dir=models_dir,
        threads=threads,
        max_batch=16,
        batch_wait=0.002,
        cache_size=0,
    )
    clf = intel.build_classifier(settings)
    latencies: list[float] = []
    queue: asyncio.Queue[MessageFacts] = asyncio.Queue()
    for f in facts[: min(n, 1000)]:
        queue.put_nowait(f)

    async def sender() -> None:
        while not queue.empty():
            f = queue.get_nowait()
            s = time.perf_counter()
            await clf.classify_many([f])
            latencies.append((time.perf_counter() - s) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(8)))
    conc_s = time.perf_counter() - t0
    await clf.close()
    latencies.sort()
    # Open loop at the target rate: one message every 1/rate s, whatever the previous ones are doing.
    clf = intel.build_classifier(settings)
    arrivals: list[float] = []
    start = time.perf_counter()

    async def arrive(k: int, f: MessageFacts) -> None:
        await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
        s = time.perf_counter()
        await clf.classify_many([f])
        arrivals.append((time.perf_counter() - s) * 1000)

    await asyncio.gather(*(arrive(k, f) for k, f in enumerate(facts[: min(n, int(rate * 8))])))
    await clf.close()
    arrivals.sort()
    serial: list[float] = []
    clf = intel.build_classifier(
        AnalysisSection(
            classifier="models",
            models_dir=models_dir,
            threads=threads,
            max_batch=1,
            batch_wait=0,
            cache_size=0,
        )
    )
    for f in facts[:200]:
        s = time.perf_counter()
        await clf.classify_many([f])
        serial.append((time.perf_counter() - s) * 1000)
    await clf.close()
    serial.sort()
    return {
        "threads": threads,
        "messages": len(facts),
        "bulk_msg_per_s": round(len(facts) / bulk_s, 1),
        "concurrent8_msg_per_s": round(len(latencies) / conc_s, 1),
        "concurrent8_p50_ms": round(latencies[len(latencies) // 2], 2),
        "concurrent8_p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
        f"open{rate:.0f}_p50_ms": round(arrivals[len(arrivals) // 2], 2),
        f"open{rate:.0f}_p99_ms": round(arrivals[int(len(arrivals) * 0.99)], 2),
        "serial_p50_ms": round(serial[len(serial) // 2], 2),
        "serial_p99_ms": round(serial[int(len(serial) * 0.99)], 2),
        "stage_share": {k: round(v / len(verdicts), 3) for k, v in sorted(stages.items())},
        "rss_mb_corpus": round(base_rss, 1),
        "rss_mb_models_loaded": round(loaded_rss, 1),
        "rss_mb_end": round(rss_mb(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="/tmp/corpora")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models-dir", default="")
    ap.add_argument("--rate", type=float, default=150.0, help="arrival rate of the open-loop latency run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(
            json.dumps(
                asyncio.run(run_one(args.threads[0], Path(args.corpus), args.n, args.models_dir, args.rate))
            )
        )
        return
    for threads in args.threads:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--threads",
                str(threads),
                "--corpus",
                args.corpus,
                "--n",
                str(args.n),
                "--models-dir",
                args.models_dir,
                "--rate",
                str(args.rate),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(out.strip())


if __name__ == "__main__":
    main()
