"""A real gatewayd process for integration tests: its own config, spool and SQLite file under a temp dir,
listeners on free loopback ports, started with ``python -m gatewayd run`` and stopped by signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


class Gatewayd:
    def __init__(
        self, root: Path, *, upstream_port: int, extra: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.config = root / "gatewayd.toml"
        self.log = root / "gatewayd.log"
        sections: dict[str, dict[str, Any]] = {
            "smtp": {"listen": [f"127.0.0.1:{self.smtp_port}"], "hostname": "gw.test"},
            "smtp.upstream": {"host": "127.0.0.1", "port": upstream_port, "timeout": 10.0},
            "spool": {"path": str(root / "spool"), "retry_min": "1s", "retry_max": "2s"},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "storage": {"url": f"sqlite+aiosqlite:///{root / 'gatewayd.db'}"},
            "logging": {"level": "info"},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        write_config(self.config, sections)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []

    def start(self, timeout: float = 30.0) -> Gatewayd:
        """Start and return once the daemon logged ``event=started`` (all listeners bound)."""
        logfile = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        started = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace")
                self._lines.append(line)
                logfile.write(raw)
                logfile.flush()
                if "event=started" in line:
                    started.set()
            started.set()

        threading.Thread(target=pump, daemon=True).start()
        if not started.wait(timeout) or proc.poll() is not None:
            self.kill()
            pytest.fail(f"gatewayd did not start:\n{''.join(self._lines[-40:])}", pytrace=False)
        return self

    def logs(self) -> str:
        return "".join(self._lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"gatewayd did not stop within {timeout} s after SIGTERM", pytrace=False)

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0.0 if none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            if metric != name:
                continue
            got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
            if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gatewayd", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if check and result.returncode != 0:
            pytest.fail(f"gatewayd {' '.join(args)} failed: {result.stderr}", pytrace=False)
        return result

    def wait_until(self, condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out waiting for {what}; log tail:\n{''.join(self._lines[-30:])}", pytrace=False
                )
            time.sleep(0.1)


@pytest.fixture
def gatewayd_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Gatewayd] = []

    def make(upstream_port: int, name: str = "gw", **extra: dict[str, Any]) -> Gatewayd:
        gw = Gatewayd(
            tmp_path / name,
            upstream_port=upstream_port,
            extra={k.replace("__", "."): v for k, v in extra.items()},
        )
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.kill()
