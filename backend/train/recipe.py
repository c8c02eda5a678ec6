"""The recipe every model of a run shares, as data: presets, validation, a run-spec JSON round trip.

Shared by every model of a run: tokenizer (or the probe's vocabulary), data, the order of batches (one seed),
optimizer (AdamW), learning-rate schedule (linear warm-up, then cosine to ``min_lr_ratio`` of the peak),
batch size, sequence length, token budget, precision and seed. Only the architecture differs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional

from ..arch.errors import ArchLabError
from .budget import METRICS

DATA_KINDS = ("corpus", "upload", "mqar", "distance")
PRECISIONS = ("auto", "fp32", "bf16")
MAX_MODELS = 8
#: an ablation's variants, and the runs of a run (variants × learning rates × seeds)
MAX_VARIANTS = 64
MAX_MEMBERS = 1024
#: recipe fields that may differ between the runs of one run (a sweep): everything else is shared
PER_RUN = ("lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip", "seed", "z_loss")
MAX_TOKENS = 10_000_000_000
MAX_BUDGET = 2_000_000_000
_SUFFIX = {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "b": 1e9, "B": 1e9}


def parse_amount(text: Any) -> float:
    """'4M' -> 4e6, '250k' -> 2.5e5, '1.5e6' -> 1.5e6; one-line ArchLabError otherwise."""
    if isinstance(text, bool):
        raise ArchLabError(f"not an amount: {text!r} (write e.g. 4M, 250k or 20000000)")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGbB]?)\s*", str(text))
        if not m:
            raise ArchLabError(f"not an amount: {text!r} (write e.g. 4M, 250k or 20000000)")
        value = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise ArchLabError(f"an amount must be a positive number, got {text!r}")
    return value


@dataclass(frozen=True)
class Recipe:
    """How every model of a run is trained."""

    data: str = "corpus"  # corpus | upload | mqar | distance
    budget_metric: str = "active"  # active | total | flops (see budget.METRICS)
    budget: float = 1e6  # target of budget_metric per model
    tokens: int = 20_000_000  # training tokens per model
    layers: int = 8  # target depth of every miniature (whole periods of its layer pattern)
    min_head_dim: int = 16  # head-width floor (the exact GQA ratio can call for many narrow heads)
    batch: int = 64
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: float = 0.05  # share of the steps spent warming up
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    z_loss: float = 0.0  # coefficient of the z-loss z × mean(log² Z) on the output logits (OLMo 2: 1e-4)
    precision: str = "auto"  # auto: bf16 autocast on a GPU, fp32 on the CPU
    seed: int = 0
    eval_every: int = 0  # steps between validation losses (0: about 20 in a run)
    eval_windows: int = 32  # validation sequences per evaluation during training (all at the end)
    probe_vocab: int = 2048  # synthetic probes' vocabulary (MQAR keys and values split it)
    probe_examples: int = 256  # evaluation examples per probe setting
    router_bias_speed: float = 1e-3  # DeepSeek's aux-loss-free balancing: bias step per training step
    compile: bool = False  # torch.compile each model (GPU)
    max_total: Optional[int] = None  # cap on each miniature's total parameters (routed experts reduced to fit)
    name: str = ""

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch * self.seq_len))

    @property
    def warmup_steps(self) -> int:
        return max(1, int(round(self.steps * self.warmup)))

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.steps // 20)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine down to ``lr × min_lr_ratio`` at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    def validate(self) -> "Recipe":
        """ArchLabError (one line) for anything out of range; returns self."""
        checks = [
            (self.data in DATA_KINDS, f"data must be one of {', '.join(DATA_KINDS)}, not {self.data!r}"),
            (self.budget_metric in METRICS, f"budget must be one of {', '.join(METRICS)}, not {self.budget_metric!r}"),
            (
                _num(self.budget) and 1e3 <= self.budget <= MAX_BUDGET,
                f"the budget must be between 1k and {MAX_BUDGET:,.0f}, got {self.budget!r}",
            ),
            (
                _int(self.layers) and 1 <= self.layers <= 64,
                f"layers must be an integer from 1 to 64, got {self.layers!r}",
            ),
            (_int(self.min_head_dim) and 4 <= self.min_head_dim <= 256, "min_head_dim must be from 4 to 256"),
            (
                _int(self.batch) and 1 <= self.batch <= 4096,
                f"batch must be an integer from 1 to 4096, got {self.batch!r}",
            ),
            (
                _int(self.seq_len) and 16 <= self.seq_len <= 8192 and self.seq_len % 2 == 0,
                f"sequence length must be an even integer from 16 to 8192, got {self.seq_len!r}",
            ),
            (
                _int(self.tokens) and self.batch * self.seq_len <= self.tokens <= MAX_TOKENS,
                f"tokens must be at least one batch ({self.batch * self.seq_len:,}) and at most {MAX_TOKENS:,}, got {self.tokens!r}",
            ),
            (_num(self.lr) and 0 < self.lr <= 1, f"learning rate must be in (0, 1], got {self.lr!r}"),
            (_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (_num(self.warmup) and 0 <= self.warmup < 1, "warmup must be a share of the steps in [0, 1)"),
            (_num(self.weight_decay) and 0 <= self.weight_decay <= 10, "weight decay must be in [0, 10]"),
            (
                isinstance(self.betas, (tuple, list))
                and len(self.betas) == 2
                and all(_num(b) and 0 <= b < 1 for b in self.betas),
                "betas must be two numbers in [0, 1)",
            ),
            (_num(self.grad_clip) and self.grad_clip >= 0, "grad_clip must be >= 0 (0: off)"),
            (_num(self.z_loss) and 0 <= self.z_loss <= 1, "z_loss must be in [0, 1] (0: off)"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (_int(self.seed) and 0 <= self.seed < 2**31, "seed must be an integer from 0 to 2**31 - 1"),
            (_int(self.eval_every) and self.eval_every >= 0, "eval_every must be an integer >= 0"),
            (_int(self.eval_windows) and 1 <= self.eval_windows <= 100_000, "eval_windows must be from 1 to 100,000"),
            (_int(self.probe_vocab) and 64 <= self.probe_vocab <= 65_536, "probe vocabulary must be from 64 to 65,536"),
            (
                _int(self.probe_examples) and 8 <= self.probe_examples <= 100_000,
                "probe examples must be from 8 to 100,000",
            ),
            (_num(self.router_bias_speed) and 0 <= self.router_bias_speed <= 1, "router_bias_speed must be in [0, 1]"),
            (
                self.max_total is None or (_int(self.max_total) and self.max_total > 0),
                "max_total must be a positive integer",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ArchLabError(message)
        if self.data in ("mqar", "distance") and self.probe_vocab <= self.seq_len:
            raise ArchLabError(
                f"probe vocabulary ({self.probe_vocab}) must exceed the sequence length ({self.seq_len})"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ArchLabError(f"unknown recipe field(s): {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d and isinstance(d["betas"], list):
            d["betas"] = tuple(d["betas"])
        for k in ("budget", "tokens"):
            if k in d and isinstance(d[k], str):
                d[k] = parse_amount(d[k])
        if "tokens" in d and isinstance(d["tokens"], float) and d["tokens"].is_integer():
            d["tokens"] = int(d["tokens"])
        return cls(**d).validate()


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


#: Presets. "tiny" is for the CPU (a 4-model probe comparison in minutes on 2 cores); "small" for one GPU;
#: "zoo" is the recipe of the shipped trained miniatures.
PRESETS: dict[str, Recipe] = {
    "tiny": Recipe(
        budget=200_000,
        layers=4,
        tokens=1_000_000,
        batch=16,
        seq_len=128,
        lr=3e-3,
        eval_windows=16,
        probe_examples=64,
        name="tiny",
    ),
    "small": Recipe(budget=5_000_000, tokens=20_000_000, batch=64, seq_len=256, lr=2e-3, name="small"),
    "zoo": Recipe(
        budget=300_000,
        layers=6,
        min_head_dim=8,
        tokens=6_000_000,
        batch=64,
        seq_len=256,
        lr=3e-3,
        max_total=1_500_000,
        name="zoo",
    ),
}


def preset(name: str, **overrides) -> Recipe:
    if name not in PRESETS:
        raise ArchLabError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides).validate()


@dataclass(frozen=True)
class RunSpec:
    """What a run trains: models (catalog keys or config dicts) under one recipe; JSON for any scheduler.

    ``members``: the runs, when they are more than one per model (a sweep): each ``{"model": index into models,
    "key": its name, "recipe": {field: value}}`` with only :data:`PER_RUN` fields overridden. Empty: one run per
    model under the shared recipe, named by the model.
    """

    models: tuple = ()
    recipe: Recipe = field(default_factory=Recipe)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    members: tuple = ()

    def validate(self) -> "RunSpec":
        most = MAX_VARIANTS if self.members else MAX_MODELS
        if not 1 <= len(self.models) <= most:
            raise ArchLabError(f"a run trains 1 to {most} models, got {len(self.models)}")
        if not all(isinstance(m, (str, dict)) for m in self.models):
            raise ArchLabError("each model is a catalog key or a config object")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,2}", str(self.device))):
            raise ArchLabError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        self.recipe.validate()
        if self.members:
            self.runs()
        return self

    def runs(self) -> list[tuple[int, str, Recipe]]:
        """(model index, key, recipe) of every run; one-line ArchLabError for a malformed member."""
        if not self.members:
            return [(i, k, self.recipe) for i, k in enumerate(model_keys(self.models))]
        if len(self.members) > MAX_MEMBERS:
            raise ArchLabError(f"a run trains at most {MAX_MEMBERS} runs, got {len(self.members)}")
        out, seen = [], set()
        for m in self.members:
            if not isinstance(m, dict) or set(m) - {"model", "key", "recipe"}:
                raise ArchLabError('each member is {"model": index, "key": name, "recipe": {field: value}}')
            i, key, over = m.get("model"), m.get("key"), m.get("recipe") or {}
            if not _int(i) or not 0 <= i < len(self.models):
                raise ArchLabError(f"member model index must be from 0 to {len(self.models) - 1}, got {i!r}")
            if not isinstance(key, str) or not key or len(key) > 200 or key in seen:
                raise ArchLabError(f"each member needs its own name (a non-empty string), got {key!r}")
            if not isinstance(over, dict) or set(over) - set(PER_RUN):
                raise ArchLabError(f"a member may change only {', '.join(PER_RUN)}; got {sorted(over)}")
            seen.add(key)
            out.append((i, key, replace(self.recipe, **over).validate()))
        return out

    def to_json(self) -> str:
        d = {"models": list(self.models), "recipe": self.recipe.as_dict(), "device": self.device}
        if self.members:
            d["members"] = list(self.members)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "RunSpec":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ArchLabError(f"run spec is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(d, dict) or not isinstance(d.get("models"), list):
            raise ArchLabError(
                'a run spec is a JSON object with "models" (a list) and optionally "recipe" and "device"'
            )
        unknown = sorted(set(d) - {"models", "recipe", "device", "members"})
        if unknown:
            raise ArchLabError(f"unknown run-spec field(s): {', '.join(unknown)}")
        recipe = Recipe.from_dict(d.get("recipe") or {})
        members = d.get("members") or ()
        if not isinstance(members, list | tuple):
            raise ArchLabError('"members" must be a list')
        return cls(tuple(d["models"]), recipe, d.get("device", "auto"), tuple(members)).validate()


def model_keys(models) -> list[str]:
    """A unique key per model (catalog key, or the config's name), numbered when repeated."""
    keys, seen = [], {}
    for m in models:
        base = m if isinstance(m, str) else str(m.get("_name_or_path") or m.get("model_type") or "custom")
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return keys
