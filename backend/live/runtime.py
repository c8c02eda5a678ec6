"""Runnable models: miniatures, full size with random weights, pretrained checkpoints.

Placement is CPU, one GPU, or sharded over all visible GPUs with accelerate (decoder layers never
split). Loaded models are cached per request until ``release``. Pretrained checkpoints come from a
local folder or the Hugging Face cache only (never downloaded), as safetensors, without remote code.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..arch import configs, libs
from ..arch.architecture import Architecture, Source, resolve
from ..arch.errors import ArchLabError
from ..arch.memory import GiB, device_plan, kv_cache, weight_bytes
from ..arch.spec import ArchSpec
from .miniature import MINIATURE_SIZES, miniature

MODES = ("miniature", "full", "pretrained", "trained")
DEVICES = ("auto", "cpu", "cuda", "multi-gpu")
DTYPES = ("auto", "fp32", "bf16", "fp16")
#: Share of free memory kept for activations, KV cache and allocator slack.
HEADROOM = 0.15
MINIATURE_SEED = 0
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Tokens of KV cache (batch 1) a model must have room for besides its weights (the GPU fast path's cache).
KV_ALLOWANCE_TOKENS = 4096
#: Largest safetensors header read when checking a checkpoint's shapes.
MAX_SAFETENSORS_HEADER = 100_000_000

__all__ = [
    "ModelRequest",
    "LoadedModel",
    "Placement",
    "load",
    "release",
    "release_all",
    "hardware",
    "plan_placement",
    "resolve_checkpoint",
    "check_checkpoint",
    "MINIATURE_SIZES",
]


@dataclass(frozen=True)
class ModelRequest:
    source: str | dict  # catalog key, or a config dict (uploaded config.json)
    mode: str = "miniature"  # "miniature" | "full" | "pretrained" | "trained" (a shipped trained miniature)
    size: str = "small"  # miniature preset
    path: str | None = None  # pretrained: local folder, or a repo id in the HF hub cache
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "multi-gpu"
    dtype: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    compile: bool = False  # GPU fast path: also torch.compile the decode step (slow once, faster after)

    def architecture(self) -> Optional[Architecture]:
        """The source resolved (None in pretrained mode: the checkpoint's config decides)."""
        return None if self.mode in ("pretrained", "trained") else resolve(self.source)

    def key(self, arch: Optional[Architecture] = None) -> str:
        """Hashable identity (the source may be a dict); ``arch``: the source already resolved."""
        if self.mode in ("pretrained", "trained"):
            src = repr(self.source)
        else:
            src = (arch or resolve(self.source)).canon
        return json.dumps(
            [
                src,
                self.mode,
                self.size if self.mode == "miniature" else "",
                self.path,
                self.device,
                self.dtype,
                self.compile,
            ]
        )


@dataclass
class LoadedModel:
    request: ModelRequest
    model: Any
    tokenizer: Any
    spec: ArchSpec
    label: str
    params: int
    device_summary: str
    device_map: dict[str, str]
    bytes_per_device: dict[str, int]
    load_seconds: float
    dtype: str = "fp32"
    arch: Optional[Architecture] = None  # the config actually built (the miniature's, for miniatures)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one generation at a time
    decoder: Any = field(default=None, repr=False)  # GPU fast path (fastdecode.GraphDecoder), made on first use

    @property
    def input_device(self):
        return self.model.get_input_embeddings().weight.device


@dataclass(frozen=True)
class Placement:
    kind: str  # "cpu" | "cuda" | "multi-gpu"
    dtype: str  # resolved: fp32 / bf16 / fp16
    device_map: dict[str, str]  # module name -> "cpu" / "cuda:i" ("" = whole model)
    need_bytes: int  # weights at ``dtype``
    kv_bytes: int = 0  # KV allowance (KV_ALLOWANCE_TOKENS tokens, batch 1) checked on top


# ----------------------------------------------------------------- hardware


def _meminfo() -> tuple[float, float]:
    total = avail = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024 / GiB
            elif line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    if not avail:
        try:
            import psutil

            vm = psutil.virtual_memory()
            total, avail = vm.total / GiB, vm.available / GiB
        except ImportError:
            pass
    return total, avail


def hardware() -> dict:
    """{"cuda", "gpus": [{"index","name","total_gib","free_gib"}], "cpu_threads", "ram_total_gib", "ram_available_gib"}."""
    import torch

    gpus = []
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(
                {"index": i, "name": torch.cuda.get_device_name(i), "total_gib": total / GiB, "free_gib": free / GiB}
            )
    total, avail = _meminfo()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"cuda": cuda, "gpus": gpus, "cpu_threads": threads, "ram_total_gib": total, "ram_available_gib": avail}


# ----------------------------------------------------------------- placement


def _gib(n: float) -> str:
    return f"{n / GiB:,.1f} GiB"


def plan_placement(
    source: Source, device: str, dtype: str, hw: dict | None = None, need_bytes: int | None = None
) -> Placement:
    """Where a model goes, given the hardware (``hw`` as ``hardware()`` returns; fake it in tests).

    ``auto`` prefers one GPU, then all GPUs sharded, then the CPU. One GPU means one model per GPU: of
    the GPUs the model fits on, the one holding the fewest models (``hw["gpus"][i]["models"]``, counted by
    the runtime), then the one with the most free memory. ArchLabError says how much memory is needed
    when nothing can hold the weights.
    """
    if device not in DEVICES:
        raise ArchLabError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise ArchLabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    hw = hw if hw is not None else hardware()
    arch = source if isinstance(source, Architecture) else resolve(source)
    gpus = hw.get("gpus") or []
    if device in ("cuda", "multi-gpu") and not gpus:
        raise ArchLabError(f"device {device!r} asked for, but no CUDA GPU is visible")
    want_gpu = device in ("cuda", "multi-gpu") or (device == "auto" and gpus)
    dt = dtype if dtype != "auto" else ("bf16" if want_gpu else "fp32")
    need = need_bytes if need_bytes is not None else weight_bytes(arch, dt)
    kv = kv_allowance(arch, dt)
    total_need = need + kv
    what = f"{_gib(total_need)} ({_gib(need)} of {dt} weights + {_gib(kv)} KV cache for {KV_ALLOWANCE_TOKENS:,} tokens)"
    fitting = sorted(
        (g for g in gpus if total_need <= g["free_gib"] * GiB * (1 - HEADROOM)),
        key=lambda g: (g.get("models", 0), -g["free_gib"]),
    )
    best = fitting[0] if fitting else (max(gpus, key=lambda g: g["free_gib"]) if gpus else None)

    def fits_one() -> bool:
        return bool(fitting)

    if device in ("cuda", "auto") and fits_one():
        return Placement("cuda", dt, {"": f"cuda:{best['index']}"}, need, kv)
    if device == "cuda":
        raise ArchLabError(
            f"needs {what} (+{HEADROOM:.0%} headroom); the largest free GPU "
            f"has {best['free_gib']:,.1f} GiB free: try multi-gpu or a smaller dtype"
        )
    total_free = sum(g["free_gib"] for g in gpus)
    if device == "multi-gpu" or (device == "auto" and gpus and total_need <= total_free * GiB * (1 - HEADROOM)):
        plan = _balanced_plan(arch, [g["free_gib"] * (1 - HEADROOM) for g in gpus], dt, need, kv)
        if not plan.fits:
            raise ArchLabError(
                f"needs {what}; {len(gpus)} GPU(s) have {total_free:,.1f} GiB free "
                f"in all (decoder layers are not split)"
            )
        index = {g_i: g["index"] for g_i, g in enumerate(gpus)}
        dmap = {name: f"cuda:{index[d]}" for name, d in plan.device_map.items()}
        return Placement("multi-gpu", dt, dmap, need, kv)
    avail = float(hw.get("ram_available_gib") or 0.0)
    if total_need <= avail * GiB * (1 - HEADROOM):
        return Placement("cpu", dt, {"": "cpu"}, need, kv)
    where = f"{len(gpus)} GPU(s) with {total_free:,.1f} GiB free and " if gpus else ""
    raise ArchLabError(f"needs {what} (+{HEADROOM:.0%} headroom); this machine has {where}{avail:,.1f} GiB of free RAM")


def _balanced_plan(arch: Architecture, free_gib: list[float], dtype: str, need: int, kv: int):
    """A device plan that spreads the weights evenly over the GPUs.

    ``infer_auto_device_map`` fills GPU 0 before GPU 1, so a model that fits on one GPU would land on
    one GPU alone. Each GPU is first capped near an even share (the slack absorbs whole-layer
    granularity and uneven layers, e.g. dense layers before MoE ones); free memory is the last cap.
    """
    n = len(free_gib)
    reserve = kv / GiB / n
    for slack in (1.05, 1.25, 1.6):
        caps = [max(min(f, need / GiB / n * slack + reserve), 0.01) for f in free_gib]
        plan = device_plan(arch, caps, dtype, reserve_gib=reserve)
        if plan.fits:
            return plan
    return device_plan(arch, [max(f, 0.01) for f in free_gib], dtype, reserve_gib=reserve)


def kv_allowance(source: Source, dtype: str) -> int:
    """KV-cache bytes a model must have room for: KV_ALLOWANCE_TOKENS tokens (or its context), batch 1."""
    arch = source if isinstance(source, Architecture) else resolve(source)
    ctx = arch.spec.max_context
    tokens = min(KV_ALLOWANCE_TOKENS, ctx) if ctx else KV_ALLOWANCE_TOKENS
    return kv_cache(arch, tokens, 1, dtype).total_bytes


# ----------------------------------------------------------------- checkpoints

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_checkpoint(path: str, confined: bool = False) -> Path:
    """A local folder, or the snapshot folder of a repo id already in the HF hub cache (no download).

    ``confined`` (what the pages pass for visitors): only folders under ``roots.allowed_roots()``; any other
    path is refused with ``roots.REFUSED``, the same line whether it exists or not. Unconfined (the command
    line, tests, benchmarks: the server's own user) any folder is taken.
    """
    if not path or not isinstance(path, str):
        raise ArchLabError("pretrained mode needs a path: a local folder or a repo id in the Hugging Face cache")
    if confined:
        return _confined_checkpoint(path.strip())
    p = Path(path).expanduser()
    if p.is_dir():
        return p.resolve()
    if _REPO_ID.match(path):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=path, local_files_only=True))
        except Exception:
            pass
    raise ArchLabError(
        f"{path!r} is neither a folder nor a model in the local Hugging Face cache (nothing is downloaded)"
    )


def _hub_snapshot(repo_id: str) -> Optional[Path]:
    """The snapshot folder of a repo id in the HF hub cache, or None (never downloads)."""
    if not _REPO_ID.match(repo_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:
        return None


def _confined_checkpoint(path: str) -> Path:
    """A repo id in the HF cache, or a folder under an allowed root (checked before anything is looked at)."""
    from .roots import confine

    snapshot = _hub_snapshot(path)
    folder = confine(snapshot if snapshot is not None else path)
    if not folder.is_dir():
        raise ArchLabError(f"{folder.name or 'that path'} is not a folder in this server's model folders")
    return folder


def check_checkpoint(folder: Path) -> dict:
    """Validate a checkpoint folder; returns its config dict. ArchLabError names what is missing."""
    files = {f.name for f in folder.iterdir()}
    missing = []
    if "config.json" not in files:
        missing.append("config.json")
    if "model.safetensors.index.json" in files:
        index = _read_json(folder / "model.safetensors.index.json", MAX_INDEX_BYTES)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ArchLabError(f"{folder}/model.safetensors.index.json has no valid weight_map")
        shards = sorted(set(weight_map.values()))
        missing += [s for s in shards if s not in files]
    elif "model.safetensors" not in files:
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ArchLabError(
                f"{folder} has only pickle weights ({', '.join(pickles[:3])}); ArchLab loads "
                "safetensors only (pickles can run code)"
            )
        missing.append("model.safetensors (or model.safetensors.index.json)")
    has_tok = "tokenizer.json" in files or (
        "tokenizer_config.json" in files and ({"vocab.json", "merges.txt"} <= files or "tokenizer.model" in files)
    )
    if not has_tok:
        missing.append("tokenizer.json (or tokenizer_config.json with its vocabulary files)")
    if missing:
        raise ArchLabError(f"checkpoint {folder} is missing: {', '.join(missing)}")
    d = _read_json(folder / "config.json", configs.MAX_CONFIG_BYTES)
    if d.get("auto_map") or d.get("trust_remote_code"):
        raise ArchLabError(
            f"{folder}/config.json asks for remote code (auto_map); ArchLab never runs code from a checkpoint"
        )
    return d


MAX_INDEX_BYTES = 64_000_000


def _read_json(path: Path, limit: int) -> dict:
    """A JSON object from a checkpoint file, refused (before reading) when larger than ``limit`` bytes."""
    size = path.stat().st_size
    if size > limit:
        raise ArchLabError(f"{path} is {size:,} bytes; the limit is {limit:,}")
    text = path.read_bytes()
    if limit <= configs.MAX_CONFIG_BYTES:
        return configs.parse_config_text(text)
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ArchLabError(f"{path} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise ArchLabError(f"{path} must hold a JSON object")
    return d


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (8-byte length + JSON), reading nothing else."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
                raise ValueError(f"header length {n:,}")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        return {str(k): tuple(int(x) for x in v["shape"]) for k, v in header.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise ArchLabError(
            f"{path.name} is not a valid safetensors file ({type(e).__name__}: {str(e)[:120]})"
        ) from None


def check_weights(folder: Path, config: "dict | Architecture") -> None:
    """Compare a checkpoint's tensor shapes (safetensors headers only) with the model its config builds.

    ArchLabError names the first tensors whose shape differs, or how many parameters are missing, so a
    config that does not match its weights is refused before anything is allocated.
    """
    arch = resolve(config)
    if arch.as_dict().get("quantization_config"):
        return  # packed/quantized tensors have other names and shapes; transformers checks those
    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(_safetensors_shapes(f))
    model = arch.meta_model
    expected = {n: tuple(t.shape) for n, t in model.named_parameters(remove_duplicate=False)}
    bad = [
        f"{n}: config {tuple(expected[n])}, file {shape}"
        for n, shape in shapes.items()
        if n in expected and expected[n] != shape
    ]
    if bad:
        raise ArchLabError(
            f"checkpoint {folder.name} does not match its config.json ({len(bad)} tensor(s) differ, "
            f"e.g. {'; '.join(bad[:2])})"
        )
    need = sum(p.numel() for p in model.parameters())
    have = sum(math.prod(s) for s in shapes.values())
    if have < need:
        raise ArchLabError(
            f"checkpoint {folder.name} holds {have:,} weights but its config.json needs {need:,}: weights are missing"
        )


# ----------------------------------------------------------------- building


def _torch_dtype(dt: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]


def _quiet():
    import logging

    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    return lambda: tlog.setLevel(level)


_seeded_init = threading.Lock()
_no_lock = contextlib.nullcontext()


def _random_model(cfg, placement: Placement, seed: Optional[int]):
    """Random weights, built on the meta device and materialised straight onto the planned devices."""
    import torch

    from ..arch import patches
    from ..arch.meta import building

    with building(), torch.device("meta"):
        model = patches.from_config(cfg, dtype=_torch_dtype(placement.dtype))
    for name, dev in sorted(placement.device_map.items(), key=lambda kv: kv[0].count(".")):
        (model.get_submodule(name) if name else model).to_empty(device=dev, recurse=True)
    for t in list(model.parameters()) + list(model.buffers()):
        if hasattr(t, "_is_hf_initialized"):
            del t._is_hf_initialized
    for m in model.modules():
        m.__dict__.pop("_is_hf_initialized", None)
    # The global RNG is shared by threads: seeded inits of two models built at once would interleave their
    # draws and give other weights than a build alone, so seeded inits take turns.
    with _seeded_init if seed is not None else _no_lock, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model.init_weights()
    return _dispatch(model, placement)


def _dispatch(model, placement: Placement):
    if placement.kind == "multi-gpu":
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=placement.device_map)
    return model.eval()


def _device_bytes(model) -> dict[str, int]:
    out: dict[str, int] = {}
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
    return out


def _summary(devs: list[str]) -> str:
    cuda = sorted(int(d.split(":")[1]) for d in devs if d.startswith("cuda:"))
    if len(cuda) > 1:
        return f"cuda:{cuda[0]}–{cuda[-1]} (sharded)"
    return devs[0] if len(devs) == 1 else ", ".join(devs)


def _build(request: ModelRequest, arch: Optional[Architecture], progress: Callable[[str], None]) -> LoadedModel:
    """Build a request whose source is resolved as ``arch`` (None in pretrained mode)."""
    from .tokenizer import load_offline

    libs.load()  # before any transformers import below (its first import is not thread-safe)
    t0 = time.perf_counter()
    restore = _quiet()
    try:
        if request.mode == "pretrained":
            return _pretrained(request, progress, t0)
        if request.mode == "trained":
            return _trained(request, progress, t0)
        if request.mode == "miniature":
            if request.size not in MINIATURE_SIZES:
                raise ArchLabError(
                    f"unknown miniature size {request.size!r}; choose one of {', '.join(MINIATURE_SIZES)}"
                )
            full = arch
            arch = miniature(full, request.size)
            label = f"{full.label} (miniature, {request.size})"
            seed = MINIATURE_SEED
        else:
            seed = None
            label = f"{arch.label} (full width, random)"
        with _admitted(arch, request.device, request.dtype) as placement:
            progress(
                f"building {label} on {placement.kind} ({_gib(placement.need_bytes)} of {placement.dtype} weights)"
            )
            model = _random_model(arch.config, placement, seed)
        tokenizer = load_offline()
        return _loaded(request, model, tokenizer, arch, label, placement, t0)
    finally:
        restore()


def _pretrained(request: ModelRequest, progress, t0: float) -> LoadedModel:
    folder = resolve_checkpoint(request.path)
    arch = resolve(check_checkpoint(folder))
    check_weights(folder, arch)
    label = f"{folder.name if folder.parent.name != 'snapshots' else request.path} (pretrained)"
    return _load_folder(request, folder, arch, label, progress, t0)


def _trained(request: ModelRequest, progress, t0: float) -> LoadedModel:
    """A shipped trained miniature (``live.zoo``), with the shipped tokenizer beside it."""
    from . import zoo
    from .tokenizer import load_offline

    if not isinstance(request.source, str):
        raise ArchLabError("trained miniatures are shipped for catalog models only")
    model = zoo.get(request.source)
    arch = resolve(json.loads((model.folder / "config.json").read_text()))
    check_weights(model.folder, arch)
    return _load_folder(
        request,
        model.folder,
        arch,
        f"{configs.label(request.source)} (trained miniature)",
        progress,
        t0,
        tokenizer=load_offline(),
    )


def _load_folder(
    request: ModelRequest, folder: Path, arch: Architecture, label: str, progress, t0: float, tokenizer=None
) -> LoadedModel:
    """``from_pretrained`` of a checked folder onto the planned devices (its own tokenizer unless given one; a
    patched checkpoint built from its config and patched first, see ``arch.patches.from_pretrained``)."""
    from transformers import AutoTokenizer

    from ..arch import patches

    with _admitted(arch, request.device, request.dtype) as placement:
        progress(f"loading {label} on {placement.kind} ({_gib(placement.need_bytes)} of {placement.dtype} weights)")
        dmap = placement.device_map if placement.kind == "multi-gpu" else placement.device_map[""]
        from ..arch.meta import building

        try:
            with building():  # default dtype switched while it builds (see meta.BUILD_LOCK)
                model = patches.from_pretrained(
                    str(folder),
                    dtype=_torch_dtype(placement.dtype),
                    device_map=dmap,
                    local_files_only=True,
                    trust_remote_code=False,
                    use_safetensors=True,
                )
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except ArchLabError:
            raise
        except Exception as e:
            raise ArchLabError(
                f"could not load {folder}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            ) from None
    return _loaded(request, model.eval(), tokenizer, arch, label, placement, t0)


def _loaded(request, model, tokenizer, arch: Architecture, label, placement: Placement, t0: float) -> LoadedModel:
    per_dev = _device_bytes(model)
    dmap = getattr(model, "hf_device_map", None) or placement.device_map
    dmap = {k: (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in dmap.items()}
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return LoadedModel(
        request,
        model,
        tokenizer,
        arch.spec,
        label,
        params,
        _summary(list(per_dev)),
        dmap,
        per_dev,
        time.perf_counter() - t0,
        placement.dtype,
        arch,
    )


# ----------------------------------------------------------------- admission

_reserved: dict[str, int] = {}  # device -> bytes promised to builds still in flight
_building: dict[str, int] = {}  # device -> builds in flight there
_admit = threading.Lock()


def _models_per_device() -> dict[str, int]:
    """Loaded models and builds in flight on each device (a sharded model counts on each of its GPUs)."""
    with _guard:
        loaded = list(_cache.values())
    counts = dict(_building)
    for lm in loaded:
        for dev in lm.bytes_per_device:
            counts[dev] = counts.get(dev, 0) + 1
    return counts


def _budget() -> dict:
    """``hardware()`` less the memory promised to builds in flight (their allocations are not seen yet),
    with the models each GPU holds (for one model per GPU)."""
    hw = hardware()
    models = _models_per_device()
    for g in hw["gpus"]:
        g["free_gib"] = max(0.0, g["free_gib"] - _reserved.get(f"cuda:{g['index']}", 0) / GiB)
        g["models"] = models.get(f"cuda:{g['index']}", 0)
    hw["ram_available_gib"] = max(0.0, hw["ram_available_gib"] - _reserved.get("cpu", 0) / GiB)
    return hw


@contextmanager
def _admitted(arch: Architecture, device: str, dtype: str):
    """Plan a placement against free memory and hold its bytes until the build ends.

    Two sessions building different large models at once cannot both be admitted into the same free memory.
    """
    with _admit:
        placement = plan_placement(arch, device, dtype, _budget())
        devs = sorted(set(placement.device_map.values()))
        share = {d: (placement.need_bytes + placement.kv_bytes) // len(devs) for d in devs}
        for d, b in share.items():
            _reserved[d] = _reserved.get(d, 0) + b
            _building[d] = _building.get(d, 0) + 1
    try:
        yield placement
    finally:
        with _admit:
            for d, b in share.items():
                _reserved[d] -= b
                _building[d] -= 1
                if not _building[d]:
                    del _building[d]


# ----------------------------------------------------------------- cache

_cache: dict[str, LoadedModel] = {}
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _validate(request: ModelRequest) -> None:
    if not isinstance(request, ModelRequest):
        raise ArchLabError(f"expected a ModelRequest, got {type(request).__name__}")
    if request.mode not in MODES:
        raise ArchLabError(f"unknown mode {request.mode!r}; choose one of {', '.join(MODES)}")
    if request.device not in DEVICES:
        raise ArchLabError(f"unknown device {request.device!r}; choose one of {', '.join(DEVICES)}")
    if request.dtype not in DTYPES:
        raise ArchLabError(f"unknown dtype {request.dtype!r}; choose one of {', '.join(DTYPES)}")
    if request.mode == "pretrained" and not request.path:
        raise ArchLabError("pretrained mode needs a path: a local folder or a repo id in the Hugging Face cache")


def load(request: ModelRequest, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Build or load the model of a request (cached per request; concurrent calls build once)."""
    _validate(request)
    arch = request.architecture()
    key = request.key(arch)
    with _guard:
        if key in _cache:
            return _cache[key]
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        with _guard:
            if key in _cache:
                return _cache[key]
        loaded = _build(request, arch, progress or (lambda _msg: None))
        with _guard:
            _cache[key] = loaded
        return loaded


def is_loaded(request: ModelRequest) -> bool:
    return request.key() in _cache


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so an unloaded model's RAM would
    still count against the machine's free memory); a no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _free() -> None:
    gc.collect()
    _trim_heap()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def release(request: ModelRequest) -> None:
    """Drop a cached model and free its memory."""
    with _guard:
        _cache.pop(request.key(), None)
        _locks.pop(request.key(), None)
    _free()


def release_all() -> None:
    """Drop every cached model."""
    with _guard:
        _cache.clear()
        _locks.clear()
    _free()
