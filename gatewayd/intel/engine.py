"""The inference engine: model files loaded once, a micro-batcher in front of one bounded executor, metrics.

``Models`` owns the onnxruntime sessions, the tokenizer and the encoder heads and is used from one worker
thread at a time. ``Engine`` is the asyncio side: requests from any number of concurrent callers queue up
(bounded), are collected into batches of up to ``max_batch`` or whatever arrived within ``batch_wait``, and
the batch function runs in the executor so the event loop never waits on a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from prometheus_client import Counter, Histogram
from tokenizers import Tokenizer

from gatewayd.intel import features as F

INFERENCE_SECONDS = Histogram(
    "gatewayd_model_inference_seconds",
    "Time of one model call (a whole batch), by model",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "gatewayd_model_batch_size",
    "Messages per model batch, by model",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STAGE = Counter(
    "gatewayd_model_stage", "Messages by the last cascade stage that decided them", ["stage"]
)  # fast | encoder | cache
# Per-message fallbacks to the rules are counted in gatewayd.metrics.FALLBACKS (reason budget | error), the
# same series the pipeline uses when the whole classifier fails: one event, one name.

FILES = ("manifest.json", "fast.onnx", "encoder.int8.onnx", "tokenizer.json", "encoder_heads.npz")
MAX_TOKENS = 128
EMBED_DIM = 384


class ModelLoadError(Exception):
    """A model file is missing or cannot be loaded; ``path`` names it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def _to_probs(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Columns: spam, phishing, priority (sigmoid), then the categories (softmax)."""
    out = np.empty_like(logits)
    out[:, :3] = _sigmoid(logits[:, :3])
    cat = logits[:, 3:] - logits[:, 3:].max(axis=1, keepdims=True)
    e = np.exp(cat)
    out[:, 3:] = e / e.sum(axis=1, keepdims=True)
    return out


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # Idle intra-op threads spin by default; on a 2-core host that steals the CPU the event loop needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(path, f"cannot load ONNX model ({type(exc).__name__})") from exc


@dataclass
class Models:
    """Loaded model files; not thread-safe by itself (the engine calls it from one thread)."""

    manifest: dict[str, Any]
    fast: ort.InferenceSession
    encoder: ort.InferenceSession
    tokenizer: Tokenizer
    heads_w: npt.NDArray[np.float32]
    heads_b: npt.NDArray[np.float32]

    @classmethod
    def load(cls, directory: Path, *, threads: int = 2, need_heads: bool = True) -> Models:
        """Load every file under ``directory``; raises ``ModelLoadError`` naming the first bad one."""
        for name in FILES:
            if name == "encoder_heads.npz" and not need_heads:
                continue
            if not (directory / name).is_file():
                raise ModelLoadError(directory / name, "missing")
        mpath = directory / "manifest.json"
        try:
            manifest = json.loads(mpath.read_text())
            manifest["fast"]["spam_band"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(mpath, f"unreadable manifest ({type(exc).__name__})") from exc
        if manifest.get("features_version") != F.VERSION:
            raise ModelLoadError(mpath, f"features_version {manifest.get('features_version')} != {F.VERSION}")
        fast = _session(directory / "fast.onnx", threads)
        encoder = _session(directory / "encoder.int8.onnx", threads)
        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:
            raise ModelLoadError(directory / "tokenizer.json", "cannot load tokenizer") from exc
        # The packaged tokenizer pads every input to 128: pad to the longest in the batch instead.
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        w = np.zeros((EMBED_DIM, len(manifest["heads"])), np.float32)
        b = np.zeros(len(manifest["heads"]), np.float32)
        if need_heads:
            hpath = directory / "encoder_heads.npz"
            try:
                with np.load(hpath) as npz:
                    w, b = npz["W"].astype(np.float32), npz["b"].astype(np.float32)
            except Exception as exc:
                raise ModelLoadError(hpath, f"unreadable heads ({type(exc).__name__})") from exc
            if w.shape != (EMBED_DIM, len(manifest["heads"])):
                raise ModelLoadError(hpath, f"unexpected shape {w.shape}")
        return cls(manifest, fast, encoder, tokenizer, w, b)

    def fast_probs(self, rows: Sequence[F.Sparse]) -> npt.NDArray[np.float32]:
        """(N, heads) probabilities of the fast stage."""
        idx, val = F.pack(list(rows))
        started = time.perf_counter()
        logits = self.fast.run(None, {"idx": idx, "val": val})[0]
        INFERENCE_SECONDS.labels(model="fast").observe(time.perf_counter() - started)
        BATCH_SIZE.labels(model="fast").observe(len(rows))
        return _to_probs(np.asarray(logits, np.float32))

    def fast_sure(self, probs: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Rows the fast stage decides alone: spam and phishing outside their validation-set bands."""
        cfg = self.manifest["fast"]
        lo, hi = cfg["spam_band"]
        plo, phi = cfg["phishing_band"]
        spam, phish = probs[:, 0], probs[:, 1]
        sure = (spam < lo) | (spam >= hi)
        sure &= (phish < plo) | (phish >= phi)
        return np.asarray(sure & (probs[:, 3:].max(axis=1) >= cfg.get("category_confident", 0.0)))

    def embed(self, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> npt.NDArray[np.float32]:
        """L2-normalised sentence embeddings (N, 384); texts should already be cut (``F.encoder_text``)."""
        if not texts:
            return np.zeros((0, EMBED_DIM), np.float32)
        if max_tokens != MAX_TOKENS:
            self.tokenizer.enable_truncation(max_tokens)
        try:
            encoded = self.tokenizer.encode_batch(list(texts))
        finally:
            if max_tokens != MAX_TOKENS:
                self.tokenizer.enable_truncation(MAX_TOKENS)
        ids = np.array([e.ids for e in encoded], np.int64)
        mask = np.array([e.attention_mask for e in encoded], np.int64)
        started = time.perf_counter()
        out = self.encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        INFERENCE_SECONDS.labels(model="encoder").observe(time.perf_counter() - started)
        BATCH_SIZE.labels(model="encoder").observe(len(texts))
        return np.asarray(out, np.float32)

    def embed_each(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One encoder call per text, unpadded. Dynamic int8 quantisation scales activations over the whole
        input tensor, so a batched call would make a message's scores depend on its batch neighbours (and on
        padding); one call per message keeps results identical however requests are batched, at little cost
        (batch 1 at 128 tokens is ~15 ms against ~14 ms per message at batch 16)."""
        if not texts:
            return np.zeros((0, EMBED_DIM), np.float32)
        return np.concatenate([self.embed([t]) for t in texts])

    def encoder_probs(self, emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return _to_probs(emb @ self.heads_w + self.heads_b)


T = TypeVar("T")
R = TypeVar("R")
Emit = Callable[[int, Any], None]  # early delivery of one result of a batch: (index in the batch, result)


@dataclass
class _Request(Generic[T, R]):
    item: T
    deadline: float  # time.monotonic() after which the caller has stopped waiting
    future: asyncio.Future[R] = field(repr=False)


class Engine(Generic[T, R]):
    """Micro-batches ``item``s from concurrent callers into calls of ``batch_fn(items, deadlines, emit)``.

    ``batch_fn`` runs in a single-thread executor (onnxruntime uses its own intra-op threads) and returns one
    result per item, in order; it may hand results over earlier with ``emit(index, result)`` (the cascade's
    fast-stage answers do not wait for the encoder). The queue is bounded: callers wait for room instead of
    piling up memory.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[T], list[float], Emit], list[R]],
        *,
        max_batch: int = 16,
        batch_wait: float = 0.005,
        queue_batches: int = 4,
    ) -> None:
        self._fn = batch_fn
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self._queue: asyncio.Queue[_Request[T, R]] | None = None
        self._queue_size = max_batch * queue_batches
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-models")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def _start(self) -> asyncio.Queue[_Request[T, R]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._run(self._queue), name="models-batcher"
            )
        return self._queue

    async def submit(self, item: T, budget: float) -> asyncio.Future[R]:
        """Queue ``item``; the returned future resolves to its result. The budget starts once queued."""
        if self._closed:
            raise RuntimeError("engine closed")
        queue = self._start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        request = _Request(item, 0.0, future)
        await queue.put(request)
        request.deadline = time.monotonic() + budget
        return future

    async def _collect(self, queue: asyncio.Queue[_Request[T, R]]) -> list[_Request[T, R]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        until = loop.time() + self.batch_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            wait = until - loop.time()
            if wait <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), wait))
            except TimeoutError:
                break
        return batch

    async def _run(self, queue: asyncio.Queue[_Request[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [r for r in await self._collect(queue) if not r.future.done()]
            if not batch:
                continue

            def deliver(index: int, result: R, batch: list[_Request[T, R]] = batch) -> None:
                future = batch[index].future
                if not future.done():
                    future.set_result(result)

            def emit(index: int, result: R, deliver: Callable[[int, R], None] = deliver) -> None:
                loop.call_soon_threadsafe(deliver, index, result)

            try:
                results = await loop.run_in_executor(
                    self._executor, self._fn, [r.item for r in batch], [r.deadline for r in batch], emit
                )
            except asyncio.CancelledError:
                for r in batch:
                    if not r.future.done():
                        r.future.cancel()
                raise
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, result in zip(batch, results, strict=True):
                if not r.future.done():
                    r.future.set_result(result)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)
