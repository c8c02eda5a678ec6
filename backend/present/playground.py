"""What the Playground and Routing pages show of a generation run: options, requests, tables, views.

``LiveRun`` wraps a :class:`generation.GenerationRun` with the page-side facts it lacks (which
selected model each slot is, its colour, the last loading message) so either page can drain it.
Everything here is plain data in, plain data out; no Streamlit.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..arch.architecture import Architecture, resolve, with_layers
from ..arch.architecture import Source as ModelSource
from ..arch.errors import ArchLabError
from ..live import memcheck, routing, runtime
from ..live.depth import DepthEstimate, estimate
from ..live.generation import Event, GenerationRun, GenerationSettings, Loading, Started
from ..live.generation import Routing as RoutingEvent
from ..live.miniature import MINIATURE_SIZES, miniature

MAX_COLUMNS = 4
#: the default: each architecture's miniature trained on the shipped corpus (``live.zoo``)
TRAINED = "trained"
MODES = {
    TRAINED: "trained miniature",
    **{size: f"{size} miniature, random weights" for size in MINIATURE_SIZES},
    "full": "full size, random",
    "layers": "full width, fewer layers",
    "pretrained": "pretrained checkpoint",
}
#: a model without a shipped trained miniature runs as this random-weight miniature instead
FALLBACK_SIZE = "small"
#: mode of a training run's checkpoints: RUN + run id
RUN = "run:"
#: "full width, fewer layers": default depth k (the per-layer cost is timed at k and k - 1)
DEFAULT_LAYERS = 4
DEVICE_LABELS = {"auto": "auto", "cpu": "CPU", "cuda": "one GPU (cuda)", "multi-gpu": "all GPUs (sharded)"}
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\,": ","}


@dataclass(frozen=True)
class SlotModel:
    """The selected model a slot of the run belongs to."""

    id: str
    label: str
    color: str
    moe: bool  # has mixture-of-experts layers (a router to trace)
    full_layers: Optional[int] = None  # "full width, fewer layers": the real model's depth


# ----------------------------------------------------------------- settings


def mode_options(checkpoint: str, run_ids: Sequence[str] = ()) -> list[str]:
    """Modes to offer: trained miniatures, random-weight miniature sizes, full size, pretrained when a
    checkpoint folder is set, and one mode per training run (of ``run_ids``) that left trained checkpoints."""
    return [m for m in MODES if m != "pretrained" or checkpoint] + [RUN + r for r in runs_with_checkpoints(run_ids)]


def mode_label(mode: str) -> str:
    """How a mode reads in the picker."""
    if mode.startswith(RUN):
        return f"trained miniatures (run {mode[len(RUN) :][:6]}…)"
    return MODES.get(mode, mode)


def runs_with_checkpoints(run_ids: Sequence[str]) -> list[str]:
    """The run ids (in order, once each) whose run folder holds at least one loadable trained checkpoint."""
    from ..train.store import trained_models

    return [r for r in dict.fromkeys(run_ids) if trained_models([r])]


def run_mode(mode: str) -> Optional[str]:
    """The run id of a training-run mode, else None."""
    return mode[len(RUN) :] if isinstance(mode, str) and mode.startswith(RUN) else None


def has_trained(source: ModelSource) -> bool:
    """A trained miniature of this model is shipped (catalog keys only)."""
    from ..live import zoo

    return isinstance(source, str) and zoo.has(source)


def fallback_note(models: Sequence[tuple[str, ModelSource]], labels: Sequence[str]) -> str:
    """One line naming the models (of the first ``MAX_COLUMNS``) that have no shipped trained miniature and so
    run as random-weight miniatures; "" when every one has. ``labels``: their display names, in order."""
    missing = [lab for (_, src), lab in list(zip(models, labels))[:MAX_COLUMNS] if not has_trained(src)]
    if not missing:
        return ""
    one = len(missing) == 1
    return (
        f"No trained miniature is shipped for {', '.join(missing)}: {'it runs' if one else 'they run'} as "
        f"{'a ' if one else ''}random-weight {FALLBACK_SIZE} miniature{'' if one else 's'} (gibberish by design)."
    )


def model_label(model_id: str) -> Optional[str]:
    """Display name of a training run's checkpoint id (see :func:`requests_for`), else None."""
    if not model_id.startswith(RUN) or "/" not in model_id:
        return None
    from ..train.store import trained_models

    run_id, key = model_id[len(RUN) :].split("/", 1)
    return next((t.label for t in trained_models([run_id]) if t.key == key), None)


def device_options(hw: dict) -> list[str]:
    """Devices ``runtime`` can use on this hardware (``hw`` as ``runtime.hardware()`` returns)."""
    gpus = len(hw.get("gpus") or [])
    return ["auto", "cpu"] + (["cuda"] if gpus else []) + (["multi-gpu"] if gpus > 1 else [])


def parse_stop(text: str) -> tuple[str, ...]:
    r"""Comma-separated stop strings; ``\n``, ``\t`` and ``\,`` are a newline, a tab and a comma."""
    parts, buf, i = [], "", 0
    while i < len(text):
        two = text[i : i + 2]
        if two in _ESCAPES:
            buf, i = buf + _ESCAPES[two], i + 2
        elif text[i] == ",":
            parts, buf, i = parts + [buf], "", i + 1
        else:
            buf, i = buf + text[i], i + 1
    parts.append(buf)
    return tuple(p.strip(" ") for p in parts if p.strip(" "))


def requests_for(
    models: Sequence[tuple[str, ModelSource]],
    mode: str,
    device: str,
    compile: bool = False,
    checkpoint: str = "",
    layers: int = DEFAULT_LAYERS,
) -> list[tuple[str, ModelSource, runtime.ModelRequest]]:
    """(model id, its config source, request) for each model to run: the first ``MAX_COLUMNS`` selected
    models, or in pretrained mode the sidebar's checkpoint folder alone (the others have no weights here).
    Mode "layers" runs each model at full width with its first ``layers`` decoder layers (all of them
    when it has no more). Mode "trained" runs each model's shipped trained miniature (a random-weight
    ``FALLBACK_SIZE`` miniature where none is shipped: :func:`fallback_note`). A run mode (``RUN`` + id) runs
    that training run's checkpoints (ids ``RUN`` + "<run id>/<key>"), through the pretrained path."""
    if run_mode(mode) is not None:
        return _run_requests(run_mode(mode), device, compile)
    if mode == "pretrained":
        if not checkpoint:
            raise ArchLabError(
                "pretrained mode needs a checkpoint folder: set one in the sidebar "
                "(Add your own model → Local checkpoint folder)"
            )
        folder = str(runtime.resolve_checkpoint(checkpoint, confined=True))  # visitors: allowed roots only
        config = runtime.check_checkpoint(Path(folder))
        request = runtime.ModelRequest(
            source=f"local:{folder}", mode="pretrained", path=folder, device=device, compile=compile
        )
        return [(f"local:{folder}", config, request)]
    if not models:
        raise ArchLabError("choose at least one model in the sidebar")
    if mode not in ("full", "layers", TRAINED) and mode not in MINIATURE_SIZES:
        raise ArchLabError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == TRAINED:
        return [
            (
                i,
                src,
                runtime.ModelRequest(src, mode=TRAINED, device=device, compile=compile)
                if has_trained(src)
                else runtime.ModelRequest(src, mode="miniature", size=FALLBACK_SIZE, device=device, compile=compile),
            )
            for i, src in models[:MAX_COLUMNS]
        ]
    if mode == "layers":
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 2:
            raise ArchLabError(
                f"fewer layers needs at least 2 layers (the per-layer cost is timed at k and k − 1), got {layers!r}"
            )
        return [
            (
                i,
                src,
                runtime.ModelRequest(
                    with_layers(src, min(layers, full_depth(src))), mode="full", device=device, compile=compile
                ),
            )
            for i, src in models[:MAX_COLUMNS]
        ]
    kind = {"mode": "full"} if mode == "full" else {"mode": "miniature", "size": mode}
    return [
        (i, src, runtime.ModelRequest(src, device=device, compile=compile, **kind)) for i, src in models[:MAX_COLUMNS]
    ]


def _run_requests(run_id: str, device: str, compile: bool) -> list[tuple[str, ModelSource, runtime.ModelRequest]]:
    """The trained checkpoints of training run ``run_id`` (its first ``MAX_COLUMNS``), loaded as pretrained."""
    from ..train.store import trained_models

    found = trained_models([run_id])
    if not found:
        raise ArchLabError("that training run has no trained checkpoint (yet): pick another model size")
    out = []
    for t in found[:MAX_COLUMNS]:
        folder = str(runtime.resolve_checkpoint(str(t.path), confined=True))
        config = runtime.check_checkpoint(Path(folder))
        out.append(
            (
                f"{RUN}{run_id}/{t.key}",
                config,
                runtime.ModelRequest(
                    source=f"local:{folder}", mode="pretrained", path=folder, device=device, compile=compile
                ),
            )
        )
    return out


_prefetched: set[str] = set()
_prefetch_lock = threading.Lock()


def prefetch(requests: Sequence[runtime.ModelRequest], hw: dict) -> int:
    """Load, in a background thread, the trained miniatures among ``requests`` that go to the CPU (each once
    per process; a few MB each), so that a first Generate finds them loaded. A failure is left for the run to
    report. ``hw``: ``runtime.hardware()``. Returns how many loads it started."""
    todo = []
    with _prefetch_lock:
        for r in requests:
            if r.mode != TRAINED or (hw.get("gpus") and r.device != "cpu"):
                continue  # GPU memory is taken only by runs (admitted against the visitor's share)
            key = r.key()
            if key not in _prefetched and not runtime.is_loaded(r):
                _prefetched.add(key)
                todo.append(r)
    if todo:
        threading.Thread(target=preload, args=(todo,), daemon=True, name="archlab-prefetch").start()
    return len(todo)


def preload(requests: Sequence[runtime.ModelRequest]) -> None:
    """Load each request's model and generate 2 tokens with it through the Playground's own path (the first
    forward passes of a process are slow: kernels and caches set up), so that a visitor's first Generate is as
    fast as the next. A failure is left for the visitor's run to report."""
    for r in requests:
        try:
            runtime.load(r)
            GenerationRun([r], "The", GenerationSettings(max_new_tokens=2)).start().join(60)
        except Exception:  # noqa: BLE001 - the run that asks for it again shows the reason
            pass


def full_depth(source: ModelSource) -> int:
    """Decoder layers of the real model."""
    return (source if isinstance(source, Architecture) else resolve(source)).spec.num_layers


def gpu_bytes(requests: Sequence[runtime.ModelRequest], hw: Optional[dict] = None) -> int:
    """GPU memory a run's models take where the runtime would place them on this server's GPUs, empty
    (weights + KV allowance, as ``runtime.plan_placement`` counts them); 0 for models that go to the CPU.
    What the run registry counts against a visitor's share of GPU memory (``hw``: ``runtime.hardware()``)."""
    hw = runtime.hardware() if hw is None else hw
    gpus = hw.get("gpus") or []
    if not gpus:
        return 0
    empty = dict(hw, gpus=[dict(g, free_gib=g["total_gib"]) for g in gpus])
    total = 0
    for r in requests:
        if r.device == "cpu":
            continue
        try:
            p = runtime.plan_placement(_built(r), r.device, r.dtype, empty)
        except ArchLabError:
            continue  # it is refused when it loads, with its own message
        if p.kind != "cpu":
            total += p.need_bytes + p.kv_bytes
    return total


def _built(request: runtime.ModelRequest) -> Architecture:
    """The architecture a request builds (the miniature's for miniatures, the checkpoint's when pretrained)."""
    if request.mode == "pretrained":
        return resolve(runtime.check_checkpoint(Path(request.path)))
    if request.mode == TRAINED:
        from ..live import zoo

        return resolve(json.loads((zoo.get(request.source).folder / "config.json").read_text()))
    arch = resolve(request.source)
    return miniature(arch, request.size) if request.mode == "miniature" else arch


# ----------------------------------------------------------------- the run


@dataclass
class LiveRun:
    """A started run plus what the pages need to draw it."""

    run: GenerationRun
    slots: list[SlotModel]
    loading: dict[int, str] = field(default_factory=dict)  # slot -> last loading message
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    routing_steps: int = 0  # Routing events seen (live redraw trigger)
    depth: dict[int, "DepthEstimate | str"] = field(default_factory=dict)  # slot -> full-depth estimate or why not
    version: int = 0  # events drained so far by any viewer (a viewer redraws when it changes)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def start(
        cls,
        slots: Sequence[SlotModel],
        requests: Sequence[runtime.ModelRequest],
        prompt: str,
        settings: GenerationSettings,
        session_id: Optional[str] = None,
    ) -> "LiveRun":
        """Validate and start a run (ArchLabError for a bad prompt or setting); ``session_id`` files it
        for ``generation.cancel_session``."""
        return cls(GenerationRun(list(requests), prompt, settings, session_id=session_id).start(), list(slots))

    def pump(self, timeout: float = 0.1) -> list[Event]:
        """Drain the events that arrived, keeping loading messages and prompt lengths. Several viewers (tabs
        with the run's link) may pump at once: each event is drained by one of them, and ``version`` tells
        the others that something changed."""
        events = self.run.poll(timeout)
        if events:
            with self._lock:
                for e in events:
                    if isinstance(e, Loading):
                        self.loading[e.slot] = e.message
                    elif isinstance(e, Started):
                        self.prompt_tokens[e.slot] = e.prompt_tokens
                    elif isinstance(e, RoutingEvent):
                        self.routing_steps += 1
                self.version += len(events)
        return events

    @property
    def done(self) -> bool:
        return self.run.done

    @property
    def running(self) -> bool:
        """A worker is still going (what the run registry counts against a visitor's quota)."""
        return self.run.running

    def cancel(self) -> None:
        self.run.cancel()

    def moe_slots(self) -> list[int]:
        """Slots whose model routes tokens (a trace exists once the model has started)."""
        return [i for i in range(len(self.slots)) if self.run.routing(i) is not None]


def display_label(live: LiveRun, slot: int) -> str:
    """How the pages name a slot's model: the runtime's label ("… (trained miniature)", "… (miniature, small)"),
    or for a training run's checkpoint the run's label ("… (trained miniature, run abc123…)")."""
    s = live.slots[slot]
    return s.label if s.id.startswith(RUN) else live.run.stats(slot)["model"]


@dataclass(frozen=True)
class SlotView:
    """What one column shows now."""

    status: str  # waiting / loading / running / finished / failed
    progress: float  # 0..1
    progress_text: str
    text: str
    summary: str  # "TTFT 12 ms · 505 tok/s · 8 tokens"
    device: str
    fast_path: bool
    error: str


def slot_view(live: LiveRun, slot: int) -> SlotView:
    """The column of ``slot``: progress (loading stage, then tokens of the maximum), text, timings."""
    s = live.run.stats(slot)
    n, most = s["new_tokens"], live.run.settings.max_new_tokens
    status = s["status"]
    if status in ("waiting", "loading"):
        progress, text = 0.0, f"loading: {live.loading.get(slot, 'queued')}"
    elif status == "running":
        progress, text = min(n / most, 1.0), f"generating: {n} / {most} tokens"
    elif status == "finished":
        progress = min(n / most, 1.0) if s["reason"] == "cancelled" else 1.0
        text = f"done: {n} tokens ({s['reason']})"
    else:
        progress, text = 0.0, "failed"
    summary = _summary(s)
    e = live.depth.get(slot)
    if isinstance(e, DepthEstimate) and e.measurable:
        summary += f" · ≈ **{e.full_tok_s:,.1f} tok/s at {e.full_layers} layers** (extrapolated)"
    return SlotView(status, progress, text, live.run.text(slot), summary, s["device"], bool(s["fast_path"]), s["error"])


def _summary(s: dict) -> str:
    parts = []
    if s["ttft_s"] is not None:
        parts.append(f"TTFT **{s['ttft_s'] * 1e3:,.0f} ms**")
    if s["tokens_per_s"] is not None:
        parts.append(f"**{s['tokens_per_s']:,.0f} tok/s**")
    if s["new_tokens"]:
        parts.append(f"{s['new_tokens']} new tokens")
    return " · ".join(parts)


def depth_pending(live: LiveRun) -> list[int]:
    """Fewer-layer slots that finished and have no full-depth estimate yet."""
    return [
        i
        for i, slot in enumerate(live.slots)
        if slot.full_layers and i not in live.depth and live.run.stats(i)["status"] == "finished"
    ]


def measure_depth(live: LiveRun) -> None:
    """Time the decode step of each finished fewer-layer model at k and k − 1 layers (a few seconds each,
    once per run; the model's lock is held, so another session's generation on it waits). Viewers of the
    same run take turns, so each model is timed once."""
    with live._lock:
        _measure_depth(live)


def _measure_depth(live: LiveRun) -> None:
    for i in depth_pending(live):
        request = live.run.requests[i]
        if not runtime.is_loaded(request):
            live.depth[i] = "the model was released before its layers could be timed"
            continue
        lm = runtime.load(request)
        try:
            with lm.lock:
                live.depth[i] = estimate(lm.model, live.slots[i].full_layers)
        except ArchLabError as e:
            live.depth[i] = str(e)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory for the second cache
            live.depth[i] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def depth_table(live: LiveRun) -> pd.DataFrame:
    """One row per fewer-layer model: layers run, streamed tok/s, step at k and k − 1, per-layer cost,
    tok/s extrapolated to full depth, and how (or why there is no estimate)."""
    rows = []
    for i, slot in enumerate(live.slots):
        if not slot.full_layers or i not in live.depth:
            continue
        e, s = live.depth[i], live.run.stats(i)
        row = {
            "model": s["model"],
            "layers run": None,
            "of": slot.full_layers,
            "streamed tok/s": s["tokens_per_s"],
            "step at k (ms)": None,
            "step at k − 1 (ms)": None,
            "per layer (ms)": None,
            "tok/s at full depth (extrapolated)": None,
            "how": e,
        }
        if isinstance(e, DepthEstimate):
            row.update(
                {
                    "layers run": e.layers,
                    "step at k (ms)": e.step_s * 1e3,
                    "step at k − 1 (ms)": e.shallower_step_s * 1e3,
                    "per layer (ms)": e.per_layer_s * 1e3,
                    "tok/s at full depth (extrapolated)": e.full_tok_s if e.measurable else None,
                    "how": e.note,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def stats_table(live: LiveRun) -> pd.DataFrame:
    """One row per model: TTFT (ms), decode tok/s, new tokens, total (s), device, GPU fast path, reason."""
    rows = []
    for i, _slot in enumerate(live.slots):
        s = live.run.stats(i)
        rows.append(
            {
                "model": display_label(live, i),
                "TTFT (ms)": None if s["ttft_s"] is None else s["ttft_s"] * 1e3,
                "tok/s": s["tokens_per_s"],
                "new tokens": s["new_tokens"],
                "total (s)": s["total_s"],
                "device": s["device"],
                "GPU fast path": s["fast_path"],
                "reason": s["reason"] or s["status"] + (f": {s['error']}" if s["error"] else ""),
            }
        )
    return pd.DataFrame(rows)


def memory_table(live: LiveRun) -> pd.DataFrame:
    """memcheck rows (predicted vs measured bytes) of each model of the run that is loaded now."""
    rows = []
    for i, request in enumerate(live.run.requests):
        if not runtime.is_loaded(request):
            continue
        lm = runtime.load(request)
        for r in memcheck.memory_check(lm):
            pred, meas = r["predicted_bytes"], r["measured_bytes"]
            rows.append(
                {
                    "model": display_label(live, i),
                    "what": r["what"],
                    "device": r["device"],
                    "predicted (MiB)": pred / 2**20,
                    "measured (MiB)": None if meas is None else meas / 2**20,
                    "measured − predicted (MiB)": None if meas is None else (meas - pred) / 2**20,
                    "how measured": r["how measured"],
                    "predicted_bytes": pred,
                    "measured_bytes": meas,
                }
            )
    return pd.DataFrame(rows)


def placement_table(live: LiveRun) -> pd.DataFrame:
    """Per loaded model and device: weight bytes its device map puts there beside the bytes there, and
    parameters found off their planned device (0 when the map shown is where the model really is)."""
    rows = []
    for i, request in enumerate(live.run.requests):
        if not runtime.is_loaded(request):
            continue
        lm = runtime.load(request)
        for r in memcheck.placement_rows(lm):
            rows.append(
                {
                    "model": display_label(live, i),
                    "device": r["device"],
                    "device map (MiB)": r["planned_bytes"] / 2**20,
                    "parameters there (MiB)": r["actual_bytes"] / 2**20,
                    "misplaced parameters": r["misplaced"],
                    "planned_bytes": r["planned_bytes"],
                    "actual_bytes": r["actual_bytes"],
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- routing


@dataclass(frozen=True)
class SlotRouting:
    """Routing of one slot, ready for the charts."""

    label: str
    color: str
    trace: routing.RoutingTrace
    experts: pd.DataFrame  # routing.token_layer_experts
    tokens: list[str]  # display text of each routed position (from ``first`` on)
    prompt_tokens: int
    first: int = 0  # position of tokens[0]


def token_label(text: str, width: int = 12) -> str:
    """A token's text made visible: spaces as ␣, newlines as ⏎, cut to ``width`` characters."""
    shown = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _tokenizer(request: runtime.ModelRequest):
    if runtime.is_loaded(request):
        return runtime.load(request).tokenizer
    if request.mode != "pretrained":
        from ..live.tokenizer import load_offline

        return load_offline()
    return None


def slot_routing(live: LiveRun, slot: int) -> Optional[SlotRouting]:
    """Routing data of ``slot`` so far, or None for a dense model (or one that has not started)."""
    trace = live.run.routing(slot)
    if trace is None:
        return None
    steps = list(trace.steps)  # the worker appends while we read: take a snapshot
    snap = routing.RoutingTrace(trace.moe_layers, trace.num_experts, trace.top_k, steps)
    experts = routing.token_layer_experts(snap)
    ids = experts.drop_duplicates("position").sort_values("position")["token_id"].tolist()
    request = live.run.requests[slot]
    tok = _tokenizer(request)
    texts = [token_label(tok.decode([i])) if tok is not None and i >= 0 else str(i) for i in ids]
    prompt = live.prompt_tokens.get(slot, len(steps[0].token_ids) if steps else 0)
    return SlotRouting(display_label(live, slot), live.slots[slot].color, snap, experts, texts, prompt)


def window(r: SlotRouting, last: int) -> SlotRouting:
    """The same routing cut to its last ``last`` positions (``last`` <= 0: all); keeps true positions."""
    first = max(0, len(r.tokens) - last) if last > 0 else 0
    if first == 0:
        return r
    return SlotRouting(
        r.label, r.color, r.trace, r.experts[r.experts["position"] >= first], r.tokens[first:], r.prompt_tokens, first
    )


def is_dense(source: ModelSource) -> bool:
    """True when the architecture has no mixture-of-experts layer (so no router)."""
    return (source if isinstance(source, Architecture) else resolve(source)).spec.moe is None


def shared_table(live: LiveRun) -> pd.DataFrame:
    """Per MoE model of the run that is loaded: % of per-token expert FFN width from shared
    (always-on) vs routed experts, for the model that ran (a miniature keeps the full model's ratios)."""
    rows = []
    for i, request in enumerate(live.run.requests):
        if not live.slots[i].moe or not runtime.is_loaded(request):
            continue
        spec = runtime.load(request).spec
        shared = routing.shared_share(spec) * 100
        rows.append(
            {
                "model": display_label(live, i),
                "shared experts (%)": shared,
                "routed experts (%)": 100 - shared,
                "shared experts": spec.moe.num_shared,
                "routed experts": spec.moe.num_experts,
                "top-k": spec.moe.top_k,
            }
        )
    return pd.DataFrame(rows)
