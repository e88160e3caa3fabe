"""Login throttling shared by SMTP AUTH and IMAP login: failures per client address and per user in a
sliding window give a growing delay, then refusal. In memory only; nothing about credentials is kept."""

from __future__ import annotations

import time
from collections import deque


class Throttle:
    """Failed logins per client address and per user in a sliding window: a growing delay, then refusal."""

    def __init__(self, *, window: float = 600.0, max_failures: int = 10, delay: float = 0.5) -> None:
        self.window = window
        self.max_failures = max_failures
        self.delay_step = delay
        self._failures: dict[str, deque[float]] = {}

    def _count(self, key: str) -> int:
        q = self._failures.get(key)
        if not q:
            return 0
        cutoff = time.monotonic() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del self._failures[key]
        return len(q)

    def blocked(self, ip: str, user: str) -> bool:
        return max(self._count("ip:" + ip), self._count("user:" + user)) >= self.max_failures

    def failures(self, ip: str, user: str) -> int:
        """Recent failures of the worse of the two keys."""
        return max(self._count("ip:" + ip), self._count("user:" + user))

    def failed(self, ip: str, user: str) -> float:
        """Record a failure; return the delay to impose before answering."""
        now = time.monotonic()
        for key in ("ip:" + ip, "user:" + user):
            self._failures.setdefault(key, deque()).append(now)
        worst = max(self._count("ip:" + ip), self._count("user:" + user))
        return min((worst - 1) * self.delay_step, 5.0)
