"""Command line: ``gatewayd run | check-config | queue | classify | example-config``."""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gatewayd import __version__, logs
from gatewayd.settings import ConfigError, Settings, find_config, load_settings

EPILOG = (
    "Configuration: -c FILE, else /etc/gatewayd/gatewayd.toml, else config/gatewayd.toml; GATEWAYD_* env."
)


def _settings(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    logs.setup(settings.logging.level, settings.logging.format)
    from gatewayd import daemon

    daemon.run(settings)
    return 0


def check(settings: Settings) -> list[str]:
    """Problems beyond the schema: files that must exist, models that must load."""
    problems = []
    for key in ("cert", "key"):
        path = getattr(settings.tls, key)
        if path and not os.access(path, os.R_OK):
            problems.append(f"tls.{key}: cannot read {path}")
    if bool(settings.tls.cert) != bool(settings.tls.key):
        problems.append("tls: cert and key must be set together")
    if settings.smtp.submission_listen and not settings.tls.cert and not settings.smtp.allow_plaintext_auth:
        problems.append(
            "smtp.submission_listen: needs tls.cert/tls.key (AUTH only after STARTTLS) "
            "or smtp.allow_plaintext_auth = true"
        )
    if settings.analysis.classifier == "models":
        try:
            from gatewayd import intel

            problems += [f"analysis.models_dir: {p}" for p in intel.check_models(settings.analysis)]
        except ImportError as exc:
            problems.append(f"analysis.classifier: models unavailable ({exc})")
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    source = find_config(args.config)
    settings = _settings(args.config)
    problems = check(settings)
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{source or '(built-in defaults)'}: OK")
    return 0


def cmd_example_config(args: argparse.Namespace) -> int:
    from gatewayd.configdoc import render

    sys.stdout.write(render())
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from gatewayd.queuectl import request
    from gatewayd.spool import SpoolLocked

    settings = _settings(args.config)
    if args.op in ("delete", "hold", "release") and not args.id:
        print(f"gatewayd queue {args.op}: needs a message id", file=sys.stderr)
        return 2
    try:
        reply = asyncio.run(request(settings.spool.path, args.op, args.id or ""))
    except SpoolLocked as exc:
        print(f"gatewayd queue: {exc}, but its control socket does not answer", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"gatewayd queue: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.op == "list" and not args.json:
        rows = reply["messages"]
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["received_at"]))
            print(f"{row['id']}  {row['state']:<10} {row['size']:>9}  {when}  <{row['mail_from']}>")
            for rcpt in row.get("pending") or []:
                print(f"{'':28}-> <{rcpt}>")
            if row.get("last_error"):
                print(f"{'':28}({row['last_error']})")
        print(f"-- {len(rows)} message(s)")
    else:
        print(json.dumps(reply, default=str))
    return 0


def iter_messages(paths: list[str]) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) for every message in files, folders (recursively) and mbox files."""
    for name in paths:
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            with file.open("rb") as fh:
                head = fh.read(5)
            if head == b"From ":
                box = mailbox.mbox(file, create=False)
                for index, key in enumerate(box.keys()):
                    yield f"{file}#{index}", box.get_bytes(key)
                box.close()
            else:
                yield str(file), file.read_bytes()


def verdict_json(label: str, facts: Any, verdict: Any, settings: Settings) -> dict[str, Any]:
    policy = settings.policy
    return {
        "path": label,
        "message_id": facts.message_id,
        "spam": {"score": round(verdict.spam_score, 4), "verdict": verdict.is_spam(policy.spam_threshold)},
        "phishing": {
            "score": round(verdict.phishing_score, 4),
            "verdict": verdict.is_phishing(policy.phishing_threshold),
        },
        "category": {
            "label": verdict.category,
            "scores": {k: round(v, 4) for k, v in verdict.category_scores.items()},
        },
        "priority": {"important": verdict.important, "score": round(verdict.priority_score, 4)},
        "summary": verdict.summary,
        "actions": [{"text": a.text, "due": a.due.isoformat() if a.due else None} for a in verdict.actions],
        "stage": verdict.stage,
        "elapsed_ms": round(verdict.elapsed_ms, 3),
        **({"fallback": verdict.fallback_reason} if verdict.fallback_reason else {}),
    }


async def _classify(args: argparse.Namespace, settings: Settings) -> int:
    from gatewayd.analysis.pipeline import Pipeline
    from gatewayd.daemon import build_classifier
    from gatewayd.mime import extract_facts

    classifier, fallback = build_classifier(settings.analysis)
    pipeline = Pipeline(classifier, fallback=fallback, budget=settings.analysis.budget)
    chunk: list[tuple[str, Any]] = []
    errors = 0

    async def flush() -> None:
        verdicts = await pipeline.analyse_many([f for _, f in chunk])
        for (label, facts), verdict in zip(chunk, verdicts, strict=True):
            out = verdict_json(label, facts, verdict, settings)
            if args.json:
                print(json.dumps(out, ensure_ascii=False))
            else:
                print(
                    f"{label}: spam={out['spam']['score']:.3f} phishing={out['phishing']['score']:.3f} "
                    f"category={verdict.category} important={verdict.important} stage={verdict.stage}\n"
                    f"  {verdict.summary}"
                )
        chunk.clear()

    try:
        for label, raw in iter_messages(args.paths):
            chunk.append((label, extract_facts(raw)))
            if len(chunk) >= 256:
                await flush()
        if chunk:
            await flush()
    except OSError as exc:
        print(f"gatewayd classify: {exc.filename}: {exc.strerror}", file=sys.stderr)
        errors += 1
    finally:
        await pipeline.close()
    return 1 if errors else 0


def cmd_classify(args: argparse.Namespace) -> int:
    settings = _settings(args.config) if args.config or find_config(None) else Settings()
    logs.setup("warning")
    return asyncio.run(_classify(args, settings))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayd", description="Self-hosted AI mail gateway.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        cmd.add_argument("-c", "--config", metavar="FILE", help="configuration file (TOML)")
        cmd.set_defaults(func=func)
        return cmd

    add("run", "Run the daemon in the foreground.", cmd_run)
    add(
        "check-config",
        "Validate the configuration; print every error with its dotted path.",
        cmd_check_config,
    )
    q = add("queue", "Inspect and manage the spool (like postqueue/postsuper).", cmd_queue)
    q.add_argument(
        "op",
        choices=["list", "flush", "delete", "hold", "release"],
        help="list | flush (retry now) | delete ID | hold ID | release ID (from hold or quarantine)",
    )
    q.add_argument("id", nargs="?", help="message id (X-Gatewayd-Id, as shown by list)")
    q.add_argument("--json", action="store_true", help="print JSON")
    c = add(
        "classify", "Analyse .eml files, folders or mbox files with the gateway's pipeline.", cmd_classify
    )
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--json", action="store_true", help="one JSON object per message")
    add(
        "example-config",
        "Print the commented example configuration generated from the schema.",
        cmd_example_config,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
