"""Memory of a real checkpoint from its metadata: every tensor's dtype and shape, no weights read.

safetensors files are read by their header only (8-byte length + JSON with dtype, shape and byte offsets);
GGUF files through the ``gguf`` package's reader (tensor infos; the file is memory-mapped, its data never
touched). Bytes are exact: the byte ranges the files give each tensor. Storage formats are told apart by
tensor names and dtypes, as the formats define them:

- fp8 weights (F8_E4M3 / F8_E5M2) with their block-scale tensors (``weight_scale_inv``, ``*_scale``);
- packed int4 (GPTQ: ``qweight`` int32 [in/8, out]; AWQ: ``qweight`` int32 [in, out/8]) with ``qzeros``,
  ``scales`` and GPTQ's ``g_idx``; bits per value from ``quantization_config.bits`` (4 if absent);
- MXFP4 (gpt-oss): ``*_blocks`` uint8 holding two 4-bit values per byte, ``*_scales`` uint8 (one E8M0
  exponent per 32 values);
- everything else at its stored dtype.

The KV-cache dtype comes from ``config.json``'s ``quantization_config`` when it names one
(``kv_cache_scheme`` of compressed-tensors, ``kv_cache_quant_algo`` of ModelOpt, ``kv_cache_dtype``),
else the config's own dtype.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .counting import COMPONENTS, component_of
from .errors import ArchLabError
from .working import Working, num

MAX_HEADER_BYTES = 100_000_000
MAX_FILES = 4096
MAX_CONFIG_BYTES = 1_000_000
MAX_INDEX_BYTES = 64_000_000
#: bytes per element of each safetensors dtype
ST_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}
ST_NAMES = {
    "F64": "fp64",
    "F32": "fp32",
    "F16": "fp16",
    "BF16": "bf16",
    "F8_E4M3": "fp8 (e4m3)",
    "F8_E5M2": "fp8 (e5m2)",
}
#: bytes per element of a KV-cache dtype
KV_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5}
_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    dtype: str  # as stored (safetensors dtype, or the GGUF type name)
    shape: tuple[int, ...]
    nbytes: int  # exact, from the file's byte range
    kind: str  # storage class, e.g. "fp8 weights", "MXFP4 scales"
    params: int  # logical parameters this tensor holds (0 for scales, zeros, indices)
    component: str  # embeddings / attention / ... (counting.COMPONENTS, or "other")


@dataclass(frozen=True)
class CheckpointMemory:
    path: str
    format: str  # "safetensors" / "gguf"
    files: tuple[tuple[str, int], ...]  # (file name, size in bytes)
    tensors: tuple[TensorInfo, ...]
    quant_method: Optional[str]
    kv_dtype: Optional[str]
    kv_dtype_source: str
    config: Optional[dict] = field(default=None, compare=False, repr=False)

    @property
    def file_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.tensor_bytes / self.params if self.params else 0.0

    def by(self, attr: str) -> dict[str, tuple[int, int, int]]:
        """attr value -> (tensors, bytes, params), largest bytes first."""
        out: dict[str, list[int]] = {}
        for t in self.tensors:
            row = out.setdefault(getattr(t, attr), [0, 0, 0])
            row[0] += 1
            row[1] += t.nbytes
            row[2] += t.params
        return dict(sorted(((k, tuple(v)) for k, v in out.items()), key=lambda kv: -kv[1][1]))

    def working(self) -> Working:
        """How the total is computed, with this checkpoint's numbers."""
        w = Working(f"Weights of {Path(self.path).name} from its {self.format} metadata")
        for kind, (n, b, p) in self.by("kind").items():
            w.step(f"{kind} ({n:,} tensors)", "Σ bytes of their byte ranges", f"{p:,} parameters", b, "B")
        w.step(
            "all tensors",
            "Σ over kinds",
            " + ".join(num(v[1]) for v in self.by("kind").values()),
            self.tensor_bytes,
            "B",
        )
        w.step(
            "bits per parameter",
            "8 × bytes / parameters",
            f"8 × {num(self.tensor_bytes)} / {num(self.params)}",
            round(self.bits_per_param, 4),
        )
        w.step(
            "files on disk",
            "Σ file sizes (tensors + headers)",
            f"{num(self.tensor_bytes)} + {num(self.file_bytes - self.tensor_bytes)}",
            self.file_bytes,
            "B",
        )
        w.note(
            "Scales, zero points and index tensors count bytes but no parameters; packed 4-bit tensors count "
            "two parameters a byte (GPTQ/AWQ: 32 / bits per int32)."
        )
        return w


# ----------------------------------------------------------------- locating a checkpoint


def locate(path: str) -> Path:
    """A checkpoint folder or file: a local path, or a repo id already in the HF cache (nothing downloaded)."""
    if not path or not isinstance(path, str) or not path.strip():
        raise ArchLabError(
            "give a checkpoint: a local folder, a .safetensors or .gguf file, or a repo id in the Hugging Face cache"
        )
    path = path.strip()
    p = Path(path).expanduser()
    if p.exists():
        return p.resolve()
    snapshot = hub_snapshot(path)
    if snapshot is not None:
        return snapshot
    raise ArchLabError(
        f"{path!r} is neither a file or folder on this server nor a model in the local Hugging Face "
        "cache (nothing is downloaded)"
    )


def hub_snapshot(repo_id: str) -> Optional[Path]:
    """The snapshot folder of a repo id already in the local Hugging Face cache, or None (never downloads)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id.strip()):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id.strip(), local_files_only=True))
    except Exception:  # not in the cache (or no cache): nothing is fetched
        return None


def read_checkpoint(path: str) -> CheckpointMemory:
    """Every tensor's dtype, shape and exact bytes from a checkpoint's metadata (no weights read)."""
    p = locate(path)
    if p.is_file():
        files, folder = [p], p.parent
    else:
        folder = p
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.gguf"))
        if not files:
            raise ArchLabError(f"{p} holds no .safetensors or .gguf files")
        _check_index(p)
    if len(files) > MAX_FILES:
        raise ArchLabError(f"{p} holds {len(files):,} weight files; the limit is {MAX_FILES:,}")
    config = _config(folder)
    qc = (config or {}).get("quantization_config") or {}
    if not isinstance(qc, dict):
        qc = {}
    if all(f.suffix == ".gguf" for f in files):
        tensors = [t for f in files for t in _gguf_tensors(f)]
        fmt = "gguf"
    elif all(f.suffix == ".safetensors" for f in files):
        bits = qc.get("bits", 4)
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (2, 3, 4, 8):
            raise ArchLabError(f"quantization_config.bits must be 2, 3, 4 or 8, got {bits!r}")
        tensors = [t for f in files for t in _safetensors_tensors(f, bits)]
        fmt = "safetensors"
    else:
        raise ArchLabError(f"{p.name}: give a .safetensors or .gguf file")
    kv, source = kv_dtype_of(config) if config is not None else (None, "no config.json beside the weights")
    method = qc.get("quant_method")
    return CheckpointMemory(
        str(p),
        fmt,
        tuple((f.name, f.stat().st_size) for f in files),
        tuple(tensors),
        str(method) if method else None,
        kv,
        source,
        config,
    )


def _check_index(folder: Path) -> None:
    """A sharded checkpoint's index must not name shards the folder lacks (the total would be short)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise ArchLabError(f"{index.name} is larger than {MAX_INDEX_BYTES:,} bytes")
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = {str(v) for v in weight_map.values()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ArchLabError(f"{index.name} has no valid weight_map") from None
    missing = sorted(s for s in shards if not (folder / s).is_file())
    if missing:
        raise ArchLabError(f"{folder.name} is missing {len(missing)} shard(s) its index names, e.g. {missing[0]}")


def _config(folder: Path) -> Optional[dict]:
    f = folder / "config.json"
    if not f.is_file():
        return None
    if f.stat().st_size > MAX_CONFIG_BYTES:
        raise ArchLabError(f"{f} is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        d = json.loads(f.read_bytes())
    except (ValueError, RecursionError) as e:
        raise ArchLabError(f"{f} is not valid JSON: {str(e)[:160]}") from None
    if not isinstance(d, dict):
        raise ArchLabError(f"{f} must hold a JSON object")
    return d


# ----------------------------------------------------------------- KV-cache dtype


def kv_dtype_of(config: dict) -> tuple[str, str]:
    """(KV-cache dtype, where it was read) from a config dict."""
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        scheme = qc.get("kv_cache_scheme")
        if isinstance(scheme, dict) and scheme.get("num_bits"):
            bits, kind = scheme.get("num_bits"), str(scheme.get("type", "float")).lower()
            dtype = {(8, "float"): "fp8", (8, "int"): "int8", (16, "float"): "bf16", (4, "float"): "fp4"}.get(
                (bits, kind)
            )
            if dtype is None:
                raise ArchLabError(
                    f"quantization_config.kv_cache_scheme: {bits}-bit {kind} is not a KV dtype ArchLab knows"
                )
            return dtype, f"quantization_config.kv_cache_scheme ({bits}-bit {kind})"
        algo = qc.get("kv_cache_quant_algo")
        if isinstance(algo, str) and algo:
            dtype = {"fp8": "fp8", "int8": "int8", "nvfp4": "fp4"}.get(algo.lower())
            if dtype is None:
                raise ArchLabError(f"quantization_config.kv_cache_quant_algo {algo!r} is not a KV dtype ArchLab knows")
            return dtype, f"quantization_config.kv_cache_quant_algo ({algo})"
        name = qc.get("kv_cache_dtype")
        if isinstance(name, str) and name and name != "auto":
            dtype = "fp8" if name.lower().startswith("fp8") else _TORCH_DTYPES.get(name.lower(), name.lower())
            if dtype not in KV_BYTES:
                raise ArchLabError(f"quantization_config.kv_cache_dtype {name!r} is not a KV dtype ArchLab knows")
            return dtype, f"quantization_config.kv_cache_dtype ({name})"
    torch_dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(torch_dtype, str) and torch_dtype in _TORCH_DTYPES:
        return _TORCH_DTYPES[torch_dtype], f"the config's dtype ({torch_dtype}); no KV dtype in quantization_config"
    return "bf16", "not stated in the config: bf16 assumed"


# ----------------------------------------------------------------- safetensors


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict without ``__metadata__``, header length) of a safetensors file, reading nothing else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {n:,}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, RecursionError) as e:
        raise ArchLabError(
            f"{path.name} is not a valid safetensors file ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    header.pop("__metadata__", None)
    return header, n


def _safetensors_tensors(path: Path, bits: int) -> list[TensorInfo]:
    header, n = safetensors_header(path)
    data_size = path.stat().st_size - 8 - n
    names = set(header)
    out = []
    for name, info in header.items():
        try:
            dtype, shape = str(info["dtype"]), tuple(int(x) for x in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ArchLabError(f"{path.name}: tensor {name!r} has no valid dtype/shape/data_offsets") from None
        numel = math.prod(shape)
        nbytes = end - begin
        if dtype not in ST_BYTES:
            raise ArchLabError(f"{path.name}: tensor {name!r} has dtype {dtype!r}, which ArchLab does not know")
        if not 0 <= begin <= end <= data_size or nbytes != numel * ST_BYTES[dtype]:
            raise ArchLabError(
                f"{path.name}: tensor {name!r} ({dtype} {list(shape)}) has byte range {begin}-{end} "
                "that does not match its shape or the file"
            )
        kind, params = _classify(name, dtype, numel, names, bits)
        out.append(TensorInfo(name, path.name, dtype, shape, nbytes, kind, params, _component(name)))
    return out


def _classify(name: str, dtype: str, numel: int, names: set, bits: int) -> tuple[str, int]:
    leaf = name.rsplit(".", 1)[-1]
    if dtype.startswith("F8_E4") or dtype == "F8_E5M2":
        return "fp8 weights", numel
    if leaf.endswith(("weight_scale_inv", "weight_scale", "input_scale", "activation_scale")) or (
        leaf.endswith("_scale") and dtype in ("F32", "BF16", "F16")
    ):
        return "fp8 scales", 0
    if leaf == "qweight" and dtype == "I32":
        return f"int{bits} packed (GPTQ/AWQ)", numel * (32 // bits)
    if leaf in ("qzeros", "scales", "g_idx") and name.rsplit(".", 1)[0] + ".qweight" in names:
        return f"int{bits} scales, zeros, g_idx", 0
    if leaf.endswith("_blocks") and dtype == "U8":
        return "MXFP4 blocks", numel * 2
    if leaf.endswith("_scales") and dtype == "U8" and name[: -len("_scales")] + "_blocks" in names:
        return "MXFP4 scales", 0
    return f"{ST_NAMES.get(dtype, dtype.lower())} weights", numel


def _component(name: str) -> str:
    c = component_of(name)
    return c if c in COMPONENTS else "other"


# ----------------------------------------------------------------- GGUF

#: GGUF tensor-name parts -> component (llama.cpp naming: blk.N.attn_q.weight, blk.N.ffn_up_exps.weight, ...)
_GGUF_PARTS = (
    ("token_embd", "embeddings"),
    ("output_norm", "norms"),
    ("_norm", "norms"),
    ("norm", "norms"),
    ("_shexp", "shared_experts"),
    ("_exps", "routed_experts"),
    ("ffn_gate_inp", "router"),
    ("attn", "attention"),
    ("ssm", "attention"),
    ("ffn", "dense_mlp"),
    ("output", "lm_head"),
)


def gguf_component(name: str) -> str:
    """The component of a GGUF tensor from its llama.cpp name."""
    base = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    part = base.split(".")[-1]
    for needle, comp in _GGUF_PARTS:
        if needle in part:
            return comp
    return "other"


def _gguf_tensors(path: Path) -> list[TensorInfo]:
    try:
        from gguf import GGUFReader
    except ImportError:  # pinned in requirements.txt
        raise ArchLabError("reading GGUF files needs the 'gguf' package (pip install -r requirements.txt)") from None
    try:
        reader = GGUFReader(str(path), "r")
        out = []
        for t in reader.tensors:
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists the fastest dimension first
            out.append(
                TensorInfo(
                    t.name,
                    path.name,
                    t.tensor_type.name,
                    shape,
                    int(t.n_bytes),
                    f"{t.tensor_type.name} weights",
                    int(t.n_elements),
                    gguf_component(t.name),
                )
            )
        return out
    except ArchLabError:
        raise
    except Exception as e:  # the reader raises ValueError, struct errors, KeyError on a bad type, ...
        raise ArchLabError(f"{path.name} is not a valid GGUF file ({type(e).__name__}: {str(e)[:120]})") from None


# ----------------------------------------------------------------- KV cache of a checkpoint


@dataclass(frozen=True)
class CheckpointKV:
    dtype: str
    source: str
    per_token_bytes: float
    total_bytes: int
    context: int
    working: Working = field(compare=False, repr=False)


def checkpoint_kv(ck: CheckpointMemory, context: int, batch: int = 1, mla_layout: str = "latent") -> CheckpointKV:
    """KV cache of the checkpoint's architecture at ``context`` tokens, in the dtype its config names."""
    from .architecture import resolve
    from .memory import kv_cache

    if ck.config is None or ck.kv_dtype is None:
        raise ArchLabError(f"{Path(ck.path).name}: no config.json beside the weights, so no KV-cache figure")
    arch = resolve(ck.config)
    b = KV_BYTES[ck.kv_dtype]
    elements = kv_cache(arch, context, batch, "fp32", mla_layout)  # 4 bytes an element: elements = bytes / 4
    w = Working(f"KV cache of {arch.label} in {ck.kv_dtype} ({ck.kv_dtype_source})")
    per_token = w.step(
        "KV bytes per token, all layers",
        "elements per token × b_kv",
        f"{num(elements.per_token_bytes / 4)} × {num(b)}",
        elements.per_token_bytes / 4 * b,
        "B",
    )
    total = w.step(
        f"KV bytes at {context:,} tokens × {batch}",
        "cached elements × b_kv (windows and linear states capped)",
        f"{num(elements.total_bytes // 4)} × {num(b)}",
        int(elements.total_bytes // 4 * b),
        "B",
    )
    return CheckpointKV(ck.kv_dtype, ck.kv_dtype_source, per_token, total, context, w)
