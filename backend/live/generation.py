"""Streaming generation of several models at once: one worker thread per model, events in a queue.

Each worker runs a manual decode loop over the model's own KV cache (created by the model on the
first forward), so every token is timed exactly and a cancel takes effect before the next step.
TTFT = prompt tokenization + prefill + first pick; tok/s = decode tokens / decode time (tokens after
the first over the time after the first). One model failing emits ``Failed``; the others go on.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Optional, Union

from ..arch import libs
from ..arch.architecture import label
from ..arch.errors import ArchLabError
from . import fastdecode
from .fastdecode import GraphDecoder, pack_step, sample
from .routing import RoutingRecorder, RoutingTrace, StepRouting
from .runtime import LoadedModel, ModelRequest, load, release

MAX_NEW_TOKENS = 4096
MAX_PROMPT_CHARS = 200_000
MAX_MODELS_PER_RUN = 16
#: A run nobody polls (or joins) for this long cancels itself: the page that drained it has gone.
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    capture_routing: bool = True
    ignore_eos: bool = False  # keep going past EOS (benchmarks)

    def validate(self) -> None:
        """ArchLabError for out-of-range settings."""
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_NEW_TOKENS:
            raise ArchLabError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {n!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 10:
            raise ArchLabError(f"temperature must be between 0 and 10, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ArchLabError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ArchLabError(f"seed must be an integer from 0 to 2**63-1, got {self.seed!r}")
        if (
            not isinstance(self.stop, (tuple, list))
            or len(self.stop) > 16
            or not all(isinstance(s, str) and 0 < len(s) <= 1000 for s in self.stop)
        ):
            raise ArchLabError("stop must be a list of up to 16 non-empty strings (1,000 characters at most)")


# ----------------------------------------------------------------- events


@dataclass
class Loading:
    slot: int
    model: str
    message: str


@dataclass
class Started:
    slot: int
    model: str
    prompt_tokens: int
    device: str


@dataclass
class Token:
    slot: int
    model: str
    step: int
    token_id: int
    text: str  # new text this token completes (may be "" while a character is incomplete)
    elapsed_s: float  # since the run of this model started (after loading)


@dataclass
class Routing:
    slot: int
    model: str
    step: int
    record: StepRouting


@dataclass
class Finished:
    slot: int
    model: str
    new_tokens: int
    ttft_s: float
    tokens_per_s: float
    total_s: float
    reason: str  # "length" | "stop" | "eos" | "cancelled"


@dataclass
class Failed:
    slot: int
    model: str
    message: str


Event = Union[Loading, Started, Token, Routing, Finished, Failed]


@dataclass
class _Slot:
    label: str
    status: str = "waiting"  # waiting / loading / running / finished / failed
    text: str = ""
    new_tokens: int = 0
    ttft_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    total_s: Optional[float] = None
    device: str = ""
    reason: str = ""
    error: str = ""
    fast_path: bool = False  # GPU static cache + CUDA graph
    trace: Optional[RoutingTrace] = None
    token_ids: list = field(default_factory=list)


def request_label(request: ModelRequest) -> str:
    """A display name before the model is loaded."""
    try:
        base = request.path if request.mode == "pretrained" else label(request.source)
    except ArchLabError:
        base = "model"
    return f"{base} ({request.mode}{', ' + request.size if request.mode == 'miniature' else ''})"


def _stop_hold(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that could start a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


#: CPU decode steps of all runs take turns. Worker threads stepping tiny CPU models at once hand the GIL
#: back and forth inside every op: four streams took 2.5x longer than one after another. Taking turns
#: per step keeps the total rate of one stream (bench/generation.py); GPU steps still overlap.
CPU_TURN = threading.Lock()


class IncrementalText:
    """The text of a growing list of generated tokens, decoding only the last few tokens per step.

    Decoding the whole list at every step is quadratic over a run. As in vLLM's incremental
    detokenizer, the tokens from ``prefix`` on are decoded with and without the newest ones and the
    difference is the new text; offsets move on once it ends in a whole character. Decoding from
    the same offset both times keeps tokenizers that treat a sequence's first token specially
    (SentencePiece's leading space) consistent.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _pending(self) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        return self._decode(self.ids[self.prefix :])[len(before) :]

    def add(self, token_id: int) -> str:
        """Append a token; returns the text so far (an unfinished multi-byte character held back)."""
        self.ids.append(token_id)
        new = self._pending()
        if new and not new.endswith("\ufffd"):
            self.text += new
            self.prefix, self.read = self.read, len(self.ids)
        return self.text

    def flush(self) -> str:
        """The text with whatever is still held back (the end of the run)."""
        return self.text + self._pending()


class _PlainStepper:
    """transformers forward with a growing cache; routing read by forward hooks. Any device or map."""

    fast = False

    def __init__(self, lm: LoadedModel, capture: bool):
        self.model = lm.model
        self.recorder = RoutingRecorder(lm.model, lm.spec) if capture else None
        self.past = None
        self.device = lm.input_device
        on_cpu = self.device.type == "cpu"
        self.turn = CPU_TURN if on_cpu else contextlib.nullcontext()

    def __enter__(self):
        if self.recorder is not None:
            self.recorder.__enter__()
        return self

    def __exit__(self, *exc):
        if self.recorder is not None:
            self.recorder.__exit__(*exc)

    def advance(self, ids: list[int], settings: GenerationSettings, gen):
        """Run the token ids ``ids``; return (next token id, {layer: (indices, weights)} or None)."""
        import torch

        inputs = torch.tensor([ids], device=self.device)
        with self.turn:
            out = self.model(input_ids=inputs, past_key_values=self.past, use_cache=True, logits_to_keep=1)
            self.past = out.past_key_values
            next_id = int(sample(out.logits[0, -1].float(), settings.temperature, settings.top_p, gen))  # host sync
            layers = self.recorder.take() if self.recorder is not None else None
        return next_id, layers


#: the GPU fast path launches a step's successor before it waits for the step's host copy (bench/gpu.py's
#: ``app_serial_tok_s`` measures it off); the tokens are the same either way
PIPELINE_STEPS = True


class _GraphStepper:
    """GPU fast path: static cache, decode step replayed as a CUDA graph, routing packed on device.

    Pipelined once the step's graph is captured: the next step (fed with the token sampled on the device) is
    launched before the host waits for this step's copy, so the host's work on a token (detokenizing, routing
    records, events) overlaps the GPU's next step instead of idling it. When the run ends, the one step launched
    ahead is dropped (the next run resets the cache)."""

    fast = True

    def __init__(self, lm: LoadedModel, capture: bool, needed: int):
        size = cache_bucket(needed)
        if lm.decoder is None or lm.decoder.max_cache_len != size or lm.decoder.taps is None and capture:
            if lm.decoder is not None:
                lm.decoder.close()
                lm.decoder = None  # its cache and graph pool are freed before the next is allocated
            lm.decoder = GraphDecoder(lm.model, size, capture_routing=capture, compile=lm.request.compile)
        self.dec = lm.decoder
        self.tok = None
        self._ahead = None  # the step launched ahead: (host copy, its event, unpack, has routing)

    def __enter__(self):
        self.dec.reset()
        self.tok, self._ahead = None, None
        return self

    def __exit__(self, *exc):
        self._ahead = None

    def _launch(self, ids: list[int], settings: GenerationSettings, gen):
        """Queue one step (the prompt first) and its token's and routing's copy to pinned host memory."""
        import torch

        out = self.dec.prefill(torch.tensor([ids])) if self.tok is None else self.dec.step(self.tok)
        self.tok = sample(out.logits, settings.temperature, settings.top_p, gen)
        packed, unpack = pack_step(self.tok, out)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)  # fresh: unpack returns views of it
        host.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(packed.device))  # the copy's stream (a sharded model's last GPU)
        return host, done, unpack, bool(out.routing)

    def advance(self, ids: list[int], settings: GenerationSettings, gen):
        """The prompt ``ids`` first, then the token sampled on the device last time (``ids`` unused)."""
        step, self._ahead = self._ahead or self._launch(ids, settings, gen), None
        if PIPELINE_STEPS and self.dec.graphs and self.dec.length + 1 <= self.dec.max_cache_len:
            self._ahead = self._launch(ids, settings, gen)  # the GPU runs it while the host handles this token
        host, done, unpack, routed = step
        done.synchronize()  # the one host wait of a step
        next_id, layers = unpack(host)
        return next_id, ({layer: (i, w) for layer, i, w in layers} if routed else None)


#: shortest static cache of the GPU fast path; longer requests get the next power of two
MIN_CACHE_TOKENS = 256


def cache_bucket(needed: int) -> int:
    """Static cache length for a request of ``needed`` positions: the next power of two, at least
    ``MIN_CACHE_TOKENS``. Every decode step attends over the whole static cache (masked), so a cache
    far longer than the request slows each step; buckets keep re-captures rare."""
    return max(MIN_CACHE_TOKENS, 1 << max(needed - 1, 1).bit_length())


def _stepper(lm: LoadedModel, capture: bool, needed: int):
    if fastdecode.can_use(lm.model):
        try:
            return _GraphStepper(lm, capture, needed)
        except Exception:  # no static cache for this model: plain path
            pass
    return _PlainStepper(lm, capture)


class GenerationRun:
    """Prompt several models at once; drain events with ``poll``."""

    def __init__(
        self,
        requests: list[ModelRequest],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),
        session_id: Optional[str] = None,
        idle_timeout_s: Optional[float] = IDLE_TIMEOUT_S,
    ):
        """``session_id`` files the run under a browser session for :func:`cancel_session`;
        ``idle_timeout_s``: the run cancels itself when nobody has polled or joined it for that long
        (None: never)."""
        if not requests:
            raise ArchLabError("choose at least one model")
        if len(requests) > MAX_MODELS_PER_RUN:
            raise ArchLabError(f"{len(requests)} models asked for; a run takes at most {MAX_MODELS_PER_RUN}")
        if not isinstance(settings, GenerationSettings):
            raise ArchLabError(f"settings must be GenerationSettings, not {type(settings).__name__}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ArchLabError("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ArchLabError(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
        settings.validate()
        self.requests, self.prompt, self.settings = list(requests), prompt, settings
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._slots = [_Slot(request_label(r)) for r in self.requests]
        self._threads: list[threading.Thread] = []
        self.session_id, self.idle_timeout_s = session_id, idle_timeout_s
        self._seen = time.monotonic()  # last poll/join: the page is still there
        if session_id is not None:
            _register(session_id, self)

    # ----- public API
    def start(self) -> "GenerationRun":
        """Start one worker thread per model."""
        if self._threads:
            raise ArchLabError("this run has already started")
        libs.load()  # transformers' first import is not thread-safe: once, under a lock, before the workers
        self._threads = [
            threading.Thread(target=self._work, args=(i, r), daemon=True, name=f"archlab-gen-{i}")
            for i, r in enumerate(self.requests)
        ]
        for t in self._threads:
            t.start()
        return self

    def poll(self, timeout: float = 0.1) -> list[Event]:
        """Events that arrived (waits up to ``timeout`` for the first one)."""
        self._seen = time.monotonic()
        events = []
        try:
            events.append(self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait())
            while True:
                events.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return events

    def cancel(self) -> None:
        """Ask every worker to stop before its next step."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        """A worker is still going (events may still wait to be polled after it ends)."""
        return any(t.is_alive() for t in self._threads)

    @property
    def done(self) -> bool:
        """All workers ended and every event was polled."""
        return bool(self._threads) and not any(t.is_alive() for t in self._threads) and self._queue.empty()

    def join(self, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            while t.is_alive() and (deadline is None or time.monotonic() < deadline):
                self._seen = time.monotonic()  # someone is waiting on the run: not idle
                t.join(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))

    def text(self, slot: int) -> str:
        return self._slots[slot].text

    def stats(self, slot: int) -> dict:
        s = self._slots[slot]
        return {
            "model": s.label,
            "ttft_s": s.ttft_s,
            "tokens_per_s": s.tokens_per_s,
            "new_tokens": s.new_tokens,
            "total_s": s.total_s,
            "device": s.device,
            "status": s.status,
            "reason": s.reason,
            "error": s.error,
            "fast_path": s.fast_path,
        }

    def routing(self, slot: int) -> Optional[RoutingTrace]:
        return self._slots[slot].trace

    def token_ids(self, slot: int) -> list[int]:
        return list(self._slots[slot].token_ids)

    # ----- worker
    def _emit(self, event: Event) -> None:
        self._queue.put(event)

    def _work(self, slot: int, request: ModelRequest) -> None:
        import torch

        st = self._slots[slot]
        oom = None
        try:
            st.status = "loading"
            self._emit(Loading(slot, st.label, "loading"))
            lm = load(request, progress=lambda msg: self._emit(Loading(slot, st.label, msg)))
            st.label, st.device, st.status = lm.label, lm.device_summary, "running"
            with lm.lock, torch.inference_mode():  # inference mode is per thread: set it here
                self._generate(slot, lm)
            st.status = "finished"
        except ArchLabError as e:
            self._fail(slot, str(e))
        except torch.OutOfMemoryError as e:
            oom = (str(e).splitlines() or ["out of memory"])[0][:200]
        except Exception as e:  # one model's failure must not stop the others
            self._fail(slot, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
        if oom is not None:
            # Out of the except block, so the traceback's frames (activations, KV cache) are gone: drop the
            # model from the cache and return its memory (runs still holding it free it when they end).
            lm = None  # noqa: F841
            release(request)
            self._fail(slot, f"out of memory: {oom} (the model was unloaded to free its memory)")

    def _fail(self, slot: int, message: str) -> None:
        st = self._slots[slot]
        st.status, st.error = "failed", message
        self._emit(Failed(slot, st.label, message))

    def _generate(self, slot: int, lm: LoadedModel) -> None:
        import torch

        st, s, tok = self._slots[slot], self.settings, lm.tokenizer
        t0 = time.perf_counter()
        ids = tok(self.prompt, return_tensors="pt").input_ids
        n_prompt = int(ids.shape[1])
        if n_prompt == 0:
            raise ArchLabError("the prompt encodes to no tokens")
        if lm.spec.max_context and n_prompt >= lm.spec.max_context:
            raise ArchLabError(f"the prompt has {n_prompt:,} tokens; {lm.label} takes at most {lm.spec.max_context:,}")
        max_new = min(s.max_new_tokens, lm.spec.max_context - n_prompt) if lm.spec.max_context else s.max_new_tokens
        eos = set() if s.ignore_eos else _eos_ids(lm)
        dev = lm.input_device
        self._emit(Started(slot, st.label, n_prompt, lm.device_summary))

        capture = s.capture_routing and lm.spec.moe is not None
        if capture:
            st.trace = RoutingTrace.for_spec(lm.spec)
        stepper = _stepper(lm, capture, n_prompt + max_new + 1)
        st.fast_path = stepper.fast
        gen = torch.Generator(device=dev).manual_seed(s.seed) if s.temperature > 0 else None
        inputs, step, emitted, generated = ids[0].tolist(), 0, "", []  # host ids: no device round trip
        text, longest_stop = IncrementalText(tok), max((len(x) for x in s.stop), default=1)
        t_first = t_last = None
        reason = "length"
        with stepper:
            while True:
                if self._cancel.is_set() or self._idle():
                    reason = "cancelled"
                    break
                next_id, layers = stepper.advance(inputs, s, gen)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    st.ttft_s = now - t0
                t_last = now
                if capture:
                    record = StepRouting(step, inputs, layers or {})
                    st.trace.add(record)
                    self._emit(Routing(slot, st.label, step, record))
                if next_id in eos:
                    reason = "eos"
                    break
                generated.append(next_id)
                st.token_ids.append(next_id)
                seen = len(text.text)
                full = text.add(next_id)
                # a stop string can only end in the new text: search from just before it
                since = max(0, seen - longest_stop + 1)
                hit = min((p for p in (full.find(x, since) for x in s.stop) if p >= 0), default=-1)
                last = hit >= 0 or len(generated) >= max_new
                if last and hit < 0:
                    full = text.flush()  # the bytes of an unfinished character, if any
                if hit >= 0:
                    full, reason = full[:hit], "stop"
                safe = full if last else full[: len(full) - _stop_hold(full, s.stop)]
                if not last and safe.endswith("\ufffd"):
                    safe = safe[:-1]  # wait for the rest of a multi-byte character
                delta = safe[len(emitted) :] if safe.startswith(emitted) else ""
                emitted = safe if safe.startswith(emitted) else emitted
                st.text, st.new_tokens = full, len(generated)
                self._emit(Token(slot, st.label, step, next_id, delta, now - t0))
                if last:
                    break
                inputs = [next_id]
                step += 1
        total = time.perf_counter() - t0
        n = len(generated)
        decode_t = (t_last - t_first) if (t_first is not None and n > 1) else 0.0
        st.tokens_per_s = (n - 1) / decode_t if decode_t > 0 else 0.0
        st.total_s, st.reason, st.new_tokens = total, reason, n
        self._emit(Finished(slot, st.label, n, st.ttft_s or 0.0, st.tokens_per_s, total, reason))

    def _idle(self) -> bool:
        """True (and the run cancelled) once nobody has polled or joined it for ``idle_timeout_s``."""
        if self.idle_timeout_s is not None and time.monotonic() - self._seen > self.idle_timeout_s:
            self._cancel.set()
        return self._cancel.is_set()


# ----------------------------------------------------------------- sessions

_sessions: dict[str, "weakref.WeakSet[GenerationRun]"] = {}
_sessions_lock = threading.Lock()


def _register(session_id: str, run: GenerationRun) -> None:
    with _sessions_lock:
        for sid in [k for k, runs in _sessions.items() if not runs]:
            del _sessions[sid]
        _sessions.setdefault(session_id, weakref.WeakSet()).add(run)


def session_runs(session_id: str) -> list[GenerationRun]:
    """The runs filed under a session that are still referenced (running or not)."""
    with _sessions_lock:
        return list(_sessions.get(session_id, ()))


def cancel_session(session_id: str) -> int:
    """Cancel every run of a browser session (the page calls this when it is left or the session ends).

    Returns how many runs were still going. Each ends within one decode step with Finished("cancelled").
    """
    with _sessions_lock:
        runs = list(_sessions.pop(session_id, ()))
    going = [r for r in runs if any(t.is_alive() for t in r._threads)]
    for r in runs:
        r.cancel()
    return len(going)


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = set()
    for v in (lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids
