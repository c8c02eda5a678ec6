"""Reliability and security (issue 6): bad input, resource guards, OOM, concurrency, cancel.

The property test mutates catalog configs (delete / retype / tiny, huge, negative values / junk / plausible
near values) and holds the backend to: an ArchSpec whose formula count equals the count of the model transformers
builds, or an ArchLabError; never another exception. Cases a long fuzz (bench/reliability.py) found stay here as
fixed examples (FOUND).
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import math
import threading
import time
import tracemalloc
import weakref
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.arch import catalog, configs
from backend.arch.architecture import (
    arch_spec,
    count_params,
    formula_params,
    load_config,
)
from backend.arch.configs import LIMITS, parse_config_text
from backend.arch.errors import ArchLabError
from backend.arch.memory import kv_cache
from backend.arch.spec import ArchSpec

# ----------------------------------------------------------------- config mutations

#: Fields a mutation may add even if the base config lacks them (besides those its config class defines).
EXTRA_FIELDS = (
    "num_experts",
    "num_experts_per_tok",
    "n_routed_experts",
    "kv_lora_rank",
    "q_lora_rank",
    "sliding_window",
    "layer_types",
    "head_dim",
    "auto_map",
    "trust_remote_code",
    "model_type",
    "tie_word_embeddings",
    "rope_parameters",
    "n_group",
    "topk_group",
    "first_k_dense_replace",
    "attention_chunk_size",
    "no_rope_layers",
    "decoder_sparse_step",
    "mlp_only_layers",
)
#: Integers within the limits but too big for a quick meta build are capped (absurd ones are tested below).
CAPS = {
    "num_hidden_layers": 48,
    "n_layer": 48,
    "num_layers": 48,
    "hidden_size": 8192,
    "n_embd": 8192,
    "d_model": 8192,
    "intermediate_size": 32768,
    "vocab_size": 262144,
    "num_experts": 512,
    "n_routed_experts": 512,
    "num_local_experts": 512,
}
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=6,
)
VALUES = {
    "tiny int": st.integers(-3, 8),
    "mid int": st.integers(9, 5000),
    "huge int": st.integers(10**6, 10**15),
    "negative": st.integers(-(10**12), -1),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "string": st.text(max_size=8),
    "bool/none": st.sampled_from([True, False, None]),
    "nested junk": JUNK,
}
#: "near": a value a user might write instead (a flag flipped, a size halved, doubled or off by one, another
#: catalog model's value of the field): such configs mostly build, so they test the counts, not only refusals.
KINDS = tuple(VALUES) + ("delete", "retype", "near")
#: Half the configs are mutated only plausibly (near values, deletions): most of those build and get counted.
PLAUSIBLE = ("near", "near", "near", "delete")
#: A deleted field in a diff against a catalog config.
DELETED = "<deleted>"


class Mutated(NamedTuple):
    config: dict
    kinds: list[str]
    key: str  # the catalog config it was made from


@functools.lru_cache(maxsize=None)
def class_defaults(model_type: str) -> dict:
    """The fields the transformers config class of a catalog model type defines, with their defaults."""
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]().to_dict()


@functools.lru_cache(maxsize=None)
def catalog_values(field: str) -> tuple:
    """The distinct values a field takes across the catalog's configs."""
    seen = {
        json.dumps(catalog.raw_config(k)[field], sort_keys=True)
        for k in catalog.keys()
        if field in catalog.raw_config(k)
    }
    return tuple(json.loads(v) for v in sorted(seen))


def _near(draw, field: str, v):
    if isinstance(v, bool) or v is None:
        options = [not v, 1, 2]
    elif isinstance(v, int):
        options = [1, 2, 3, v // 2, v - 1, v + 1, v * 2]
    elif isinstance(v, float):
        options = [v / 2, v * 2, 0.5, 1.0]
    elif isinstance(v, list):
        options = [v[: len(v) // 2], v[::-1], v + v[:1]]
    elif isinstance(v, dict):
        options = [{k: x for k, x in v.items() if k != drop} for drop in v] or [None]
    else:
        options = [None]
    return copy.deepcopy(draw(st.sampled_from(options + list(catalog_values(field)))))


@st.composite
def mutated_config(draw) -> Mutated:
    """A catalog config with 1-4 mutations, the kinds of mutation applied and the catalog key."""
    key = draw(st.sampled_from(catalog.keys()))
    d = copy.deepcopy(catalog.raw_config(key))
    defaults = class_defaults(d["model_type"])
    extra = sorted(set(EXTRA_FIELDS) | set(defaults))
    drawn_kinds = PLAUSIBLE if draw(st.booleans()) else KINDS
    kinds = []
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(sorted(d) + [f for f in extra if f not in d]))
        kind = draw(st.sampled_from(drawn_kinds))
        kinds.append(kind)
        if kind == "delete":
            d.pop(field, None)
            continue
        if kind == "retype":
            v = d.get(field)
            d[field] = draw(st.sampled_from([str(v), [v], {"v": v}] + ([float(v)] if isinstance(v, int) else [])))
            continue
        v = _near(draw, field, d.get(field, defaults.get(field))) if kind == "near" else draw(VALUES[kind])
        if (
            field in CAPS
            and isinstance(v, int)
            and not isinstance(v, bool)
            and CAPS[field] < v <= LIMITS.get("num_experts" if "expert" in field else field, CAPS[field])
        ):
            v = CAPS[field]
        d[field] = v
    return Mutated(d, kinds, key)


def config_diff(key: str, d: dict) -> dict:
    """The fields of ``d`` that differ from catalog config ``key`` (DELETED where a field was removed)."""
    base = catalog.raw_config(key)
    return {f: d.get(f, DELETED) for f in sorted(set(base) | set(d)) if f not in d or f not in base or base[f] != d[f]}


def apply_diff(key: str, diff: dict) -> dict:
    """Catalog config ``key`` with ``diff`` (from :func:`config_diff`) applied."""
    d = copy.deepcopy(catalog.raw_config(key))
    for f, v in diff.items():
        if v == DELETED:
            d.pop(f, None)
        else:
            d[f] = copy.deepcopy(v)
    return d


def diff_text(key: str, diff: dict) -> str:
    """A diff as one line, e.g. ``deepseek-v3 with attention_bias: true, rope_theta: <deleted>``."""
    items = ", ".join(f"{f}: {v if v == DELETED else json.dumps(v, default=repr)[:200]}" for f, v in diff.items())
    return f"{key} with {items or 'no change'}"


class CountMismatch(AssertionError):
    """The formula from the ArchSpec disagrees with the tensors of the meta model."""


def count_mismatch(meta, formula) -> str:
    """What differs between two ParamCounts, one line ('' when they are equal)."""
    if meta == formula:
        return ""
    comps = sorted(set(meta.components) | set(formula.components))
    diffs = [
        f"{c} {meta.components.get(c, 0) - formula.components.get(c, 0):+,}"
        for c in comps
        if meta.components.get(c, 0) != formula.components.get(c, 0)
    ]
    return f"meta model - formula: total {meta.total - formula.total:+,}, active {meta.active - formula.active:+,}" + (
        f" ({', '.join(diffs)})" if diffs else ""
    )


def check_backend(d: dict) -> str:
    """Run config -> spec -> counts -> KV; 'ok' or 'refused'. CountMismatch when a catalog class's formula count
    differs from its meta model's; another AssertionError on anything else inconsistent."""
    try:
        load_config(d)
        spec = arch_spec(d)
        count = count_params(d)
        kv = kv_cache(d, 4096)
    except ArchLabError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return "refused"
    assert isinstance(spec, ArchSpec)
    assert sum(count.components.values()) == count.total
    assert all(v >= 0 for v in count.components.values()), count.components
    assert 0 <= count.active <= count.total
    if spec.model_type in {catalog.raw_config(k)["model_type"] for k in catalog.keys()}:
        mismatch = count_mismatch(count, formula_params(d))
        if mismatch:
            raise CountMismatch(mismatch)
    assert kv.total_bytes >= 0 and kv.per_token_bytes >= 0
    return "ok"


#: What the long fuzz (bench/reliability.py) found, as (catalog key, minimal diff, expected): "counted" (the
#: formula equals the meta model's count) or the config field that the one-line refusal must name.
FOUND = [
    ("deepseek-v3", {"attention_bias": True, "rope_theta": DELETED}, "counted"),  # biases of MLA projections
    ("olmo2-32b", {"num_attention_heads": 1}, "num_key_value_heads"),  # more KV heads than query heads
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),  # GPT-2 builds cross-attention layers
    ("kimi-k2", {"model_type": "llama"}, "counted"),  # MLA fields in a class without latent attention
    ("llama3-8b", {"model_type": "gpt2"}, "counted"),  # GPT-2 ignores num_key_value_heads: one KV head per head
    ("gpt-oss-20b", {"model_type": "qwen3_next"}, "layer_types"),  # a layer type the class builds no attention for
]


def _with_found(test):
    for key, diff, _ in FOUND:
        test = example(Mutated(apply_diff(key, diff), ["found"], key))(test)
    return test


@_with_found
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_config())
def test_mutated_configs_give_a_spec_or_archlaberror(case):
    check_backend(case.config)


@pytest.mark.parametrize("key,diff,expect", FOUND, ids=[diff_text(k, d) for k, d, _ in FOUND])
def test_what_the_long_fuzz_found(key, diff, expect):
    d = apply_diff(key, diff)
    if expect == "counted":
        assert check_backend(d) == "ok"
        assert count_params(d).total != count_params(key).total  # the change does change the count
        return
    with pytest.raises(ArchLabError) as e:
        arch_spec(d)
    assert f"config field {expect!r}" in str(e.value) and "\n" not in str(e.value), str(e.value)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except ArchLabError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_experts", 10**9),
        ("num_hidden_layers", 10**9),
        ("hidden_size", 10**9),
        ("vocab_size", 10**12),
        ("moe_intermediate_size", 10**9),
        ("num_experts_per_tok", 10**9),
        ("num_attention_heads", 2**40),
    ],
)
def test_absurd_sizes_refused_before_anything_is_built(field, value, monkeypatch):
    from backend.arch import meta

    d = dict(catalog.raw_config("qwen3-30b-a3b"), **{field: value}, _name_or_path=f"absurd {field}")
    load_config("gpt2")  # transformers imported: measure the refusal only
    built = []
    monkeypatch.setattr(meta, "build_meta_model", lambda cfg: built.append(cfg))
    with pytest.raises(ArchLabError, match="beyond any real model"):
        arch_spec(d)
    assert not built  # refused from the JSON, no model built
    assert _peak_bytes(lambda: arch_spec(d)) < 2_000_000


def test_absurd_mla_rank_and_groups_refused():
    ds = catalog.raw_config("deepseek-v3")
    with pytest.raises(ArchLabError, match="kv_lora_rank"):
        arch_spec(dict(ds, kv_lora_rank=10**9))
    with pytest.raises(ArchLabError, match="top-k"):
        arch_spec(dict(ds, num_experts_per_tok=300))  # more than the 256 experts: active would exceed total
    with pytest.raises(ArchLabError, match="groups"):
        arch_spec(dict(ds, n_group=7))


@pytest.mark.parametrize(
    "text,match",
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (" " * (configs.MAX_CONFIG_BYTES + 1), "limit"),
    ],
)
def test_malformed_uploads(text, match):
    with pytest.raises(ArchLabError, match=match):
        parse_config_text(text)


def test_huge_upload_refused_without_parsing(monkeypatch):
    text = '{"model_type": "gpt2", "junk": "' + "x" * (50 * configs.MAX_CONFIG_BYTES) + '"}'
    parsed = []
    real = configs.json.loads
    monkeypatch.setattr(configs.json, "loads", lambda *a, **k: parsed.append(1) or real(*a, **k))
    with pytest.raises(ArchLabError, match="limit"):
        parse_config_text(text)
    assert not parsed


@pytest.mark.parametrize(
    "d,match",
    [
        ({"model_type": "no_such_arch", "hidden_size": 8}, "unknown model_type"),
        ({"hidden_size": 8}, "no 'model_type'"),
        (dict(catalog.raw_config("gpt2"), auto_map={"AutoModelForCausalLM": "evil.Model"}), "remote code"),
        (dict(catalog.raw_config("gpt2"), trust_remote_code=True), "remote code"),
        (dict(catalog.raw_config("gpt2"), n_embd="768"), "integer"),
        (dict(catalog.raw_config("gpt2"), n_layer=-1), "positive"),
    ],
)
def test_bad_configs_named(d, match):
    with pytest.raises(ArchLabError, match=match):
        arch_spec(d)


# ----------------------------------------------------------------- generation input

from backend.live import generation, runtime  # noqa: E402
from backend.live.generation import (  # noqa: E402
    Failed,
    Finished,
    GenerationRun,
    GenerationSettings,
    Routing,
    Token,
    cancel_session,
)
from backend.live.runtime import ModelRequest, load, release  # noqa: E402

QWEN = ModelRequest("qwen3-4b", size="tiny")
MOE = ModelRequest("deepseek-v3", size="tiny")
BAD_SETTINGS = [
    dict(temperature=math.nan),
    dict(temperature=math.inf),
    dict(temperature=-1),
    dict(temperature="0.5"),
    dict(top_p=math.nan),
    dict(top_p=-math.inf),
    dict(top_p=0),
    dict(top_p="1"),
    dict(top_p=None),
    dict(max_new_tokens=0),
    dict(max_new_tokens=10**9),
    dict(max_new_tokens=5.0),
    dict(max_new_tokens="10"),
    dict(max_new_tokens=True),
    dict(seed=-1),
    dict(seed=2**70),
    dict(seed="7"),
    dict(stop="abc"),
    dict(stop=("x" * 1001,)),
    dict(stop=(1,)),
]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=[repr(b)[:40] for b in BAD_SETTINGS])
def test_bad_settings_refused(bad):
    with pytest.raises(ArchLabError) as e:
        GenerationRun([QWEN], "hello", GenerationSettings(**bad))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("prompt", ["", " \n\t", None, 5, "x" * (generation.MAX_PROMPT_CHARS + 1)])
def test_bad_prompts_refused(prompt):
    with pytest.raises(ArchLabError):
        GenerationRun([QWEN], prompt, GenerationSettings())


def test_bad_run_arguments_refused():
    with pytest.raises(ArchLabError, match="at most"):
        GenerationRun([QWEN] * (generation.MAX_MODELS_PER_RUN + 1), "hi")
    with pytest.raises(ArchLabError, match="GenerationSettings"):
        GenerationRun([QWEN], "hi", {"max_new_tokens": 3})


def _drain(run: GenerationRun, limit: float = 120) -> list:
    events, deadline = [], time.monotonic() + limit
    while not run.done and time.monotonic() < deadline:
        events += run.poll(0.05)
    assert run.done, "run did not finish"
    return events


def test_prompt_over_the_context_fails_that_model_only():
    d = dict(catalog.raw_config("qwen3-4b"), max_position_embeddings=64)
    short = ModelRequest(d, size="tiny")
    run = GenerationRun([short, QWEN], "word " * 200, GenerationSettings(max_new_tokens=4, ignore_eos=True)).start()
    events = _drain(run)
    fails = [e for e in events if isinstance(e, Failed)]
    assert [f.slot for f in fails] == [0] and "at most 64" in fails[0].message
    assert run.stats(1)["status"] == "finished" and run.stats(1)["new_tokens"] == 4


# ----------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    lm = load(QWEN)
    path = tmp_path_factory.mktemp("good")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _copy(src, dst, skip=()):
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(folder, **changes):
    d = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    (folder / "config.json").write_text(json.dumps(d))


def _load_pretrained(folder):
    return load(ModelRequest("upload", mode="pretrained", path=str(folder), device="cpu"))


def test_good_checkpoint_loads(ckpt):
    lm = _load_pretrained(ckpt)
    assert lm.params == load(QWEN).params
    release(lm.request)


def test_checkpoint_refusals(ckpt, tmp_path, monkeypatch):
    built = []
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: built.append(a) or 1 / 0)
    cases = {}
    for name, skip, edit, extra, match in [
        ("no tokenizer", ("tokenizer.json", "tokenizer_config.json"), {}, {}, "missing: tokenizer"),
        ("no weights", ("model.safetensors",), {}, {}, "missing: model.safetensors"),
        ("pickle only", ("model.safetensors",), {}, {"pytorch_model.bin": b"\x80\x04junk"}, "pickle"),
        ("wider config", (), {"intermediate_size": 480}, {}, "does not match its config"),
        ("more layers", (), {"num_hidden_layers": 4, "layer_types": None}, {}, "weights are missing"),
        ("remote code", (), {"auto_map": {"AutoModelForCausalLM": "evil.M"}}, {}, "remote code"),
        ("trust_remote_code", (), {"trust_remote_code": True}, {}, "remote code"),
        ("unknown type", (), {"model_type": "evil_arch"}, {}, "unknown model_type"),
        ("absurd experts", (), {"num_experts": 10**9}, {}, "beyond any real model"),
        (
            "garbage safetensors",
            ("model.safetensors",),
            {},
            {"model.safetensors": b"\xff" * 64},
            "not a valid safetensors",
        ),
        ("bad index", ("model.safetensors",), {}, {"model.safetensors.index.json": b"{nope"}, "not valid JSON"),
        ("huge config", ("config.json",), {}, {"config.json": b" " * (configs.MAX_CONFIG_BYTES + 1)}, "limit"),
    ]:
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        _copy(ckpt, folder, skip)
        for fname, data in extra.items():
            (folder / fname).write_bytes(data)
        if edit:
            _edit_config(folder, **edit)
        with pytest.raises(ArchLabError, match=match) as e:
            _load_pretrained(folder)
        cases[name] = str(e.value)
        assert "\n" not in str(e.value)
    assert built == []  # every refusal came before transformers was asked to allocate weights
    assert len(cases) == 12


# ----------------------------------------------------------------- resource guards


def _fake_hw(ram_gib: float = 0.0, gpus=()):
    return {
        "cuda": bool(gpus),
        "cpu_threads": 2,
        "ram_total_gib": 64.0,
        "ram_available_gib": ram_gib,
        "gpus": [{"index": i, "name": "fake", "total_gib": g, "free_gib": g} for i, g in enumerate(gpus)],
    }


def test_weights_plus_kv_checked_against_free_memory():
    from backend.arch.memory import GiB, weight_bytes

    w, kv = weight_bytes("qwen3-4b", "bf16"), runtime.kv_allowance("qwen3-4b", "bf16")
    assert kv == kv_cache("qwen3-4b", runtime.KV_ALLOWANCE_TOKENS, 1, "bf16").total_bytes > 0
    just_weights = (w + kv / 2) / GiB / (1 - runtime.HEADROOM)  # weights fit, weights + KV do not
    with pytest.raises(ArchLabError, match=r"needs [\d.,]+ GiB \(.* weights \+ .* KV cache.*largest free GPU has"):
        runtime.plan_placement("qwen3-4b", "cuda", "bf16", _fake_hw(gpus=[just_weights]))
    p = runtime.plan_placement("qwen3-4b", "cuda", "bf16", _fake_hw(gpus=[just_weights + kv / GiB * 2]))
    assert (p.need_bytes, p.kv_bytes) == (w, kv)
    with pytest.raises(ArchLabError, match=r"needs .* KV cache .* 1\.0 GiB of free RAM"):
        runtime.plan_placement("qwen3-4b", "cpu", "fp32", _fake_hw(ram_gib=1.0))


def test_load_refused_before_building_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(runtime, "hardware", lambda: _fake_hw(ram_gib=0.2))
    monkeypatch.setattr(runtime, "_random_model", lambda *a, **k: pytest.fail("built despite the refusal"))
    req = ModelRequest("gpt2", mode="full", device="cpu")  # ~0.5 GiB fp32
    release(req)
    with pytest.raises(ArchLabError, match=r"needs .* GiB .*0\.2 GiB of free RAM"):
        load(req)


def test_builds_in_flight_hold_their_memory(monkeypatch):
    """Two sessions building different models at once cannot both be admitted into the same free RAM."""
    from backend.arch.memory import GiB, weight_bytes

    need = weight_bytes("gpt2", "fp32") + runtime.kv_allowance("gpt2", "fp32")
    monkeypatch.setattr(runtime, "hardware", lambda: _fake_hw(ram_gib=1.5 * need / GiB / (1 - runtime.HEADROOM)))
    with runtime._admitted("gpt2", "cpu", "auto") as p:
        assert p.kind == "cpu" and runtime._reserved["cpu"] == need
        with pytest.raises(ArchLabError, match="free RAM"):
            with runtime._admitted("gpt2", "cpu", "auto"):
                pass
    assert runtime._reserved["cpu"] == 0
    with runtime._admitted("gpt2", "cpu", "auto"):
        pass


def _rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def simulate_oom(monkeypatch, victim: ModelRequest, other: ModelRequest, after_calls: int = 2) -> dict:
    """Run ``victim`` and ``other`` together; ``victim``'s forward raises torch.OutOfMemoryError mid-run.

    Returns figures: bytes of the victim's tensors, RSS before/after, whether it was released and freed.
    """
    lm = load(victim)
    model_ref = weakref.ref(lm.model)
    weights = sum(lm.bytes_per_device.values())
    cls = type(lm.model)
    orig, calls = cls.forward, {"n": 0}

    def forward(self, *a, **k):
        if self is model_ref():
            calls["n"] += 1
            if calls["n"] == after_calls:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, "forward", forward)
    del lm
    load(other)  # already resident, so the RSS difference is the victim's alone
    gc.collect()
    rss0 = _rss()
    run = GenerationRun([victim, other], "The quick brown fox", GenerationSettings(max_new_tokens=8, ignore_eos=True))
    events = _drain(run.start())
    gc.collect()
    rss1 = _rss()
    monkeypatch.setattr(cls, "forward", orig)
    return {
        "events": events,
        "run": run,
        "released": not runtime.is_loaded(victim),
        "freed": model_ref() is None,
        "weights_bytes": weights,
        "rss_returned_bytes": rss0 - rss1,
    }


def test_oom_releases_the_model_and_the_app_goes_on(monkeypatch):
    victim = ModelRequest("gpt2", mode="full", device="cpu")  # ~0.5 GB of fp32 weights
    r = simulate_oom(monkeypatch, victim, MOE)
    fails = [e for e in r["events"] if isinstance(e, Failed)]
    assert [f.slot for f in fails] == [0] and "out of memory" in fails[0].message and "unloaded" in fails[0].message
    assert r["run"].stats(1)["status"] == "finished" and r["run"].stats(1)["new_tokens"] == 8
    assert r["released"] and r["freed"]  # out of the cache, and no reference kept anywhere
    assert r["rss_returned_bytes"] > 0.5 * r["weights_bytes"], r
    again = GenerationRun([victim], "The quick brown fox", GenerationSettings(max_new_tokens=3, ignore_eos=True))
    _drain(again.start())
    assert again.stats(0)["status"] == "finished" and again.stats(0)["new_tokens"] == 3
    release(victim)


# ----------------------------------------------------------------- concurrency

PROMPTS = [
    f"Session {i}: " + w
    for i, w in enumerate(
        [
            "the cat sat",
            "import numpy as np",
            "Once upon a time",
            "SELECT * FROM t",
            "def f(x):",
            "12 + 30 =",
            "Bonjour tout le monde",
            "<html><body>",
        ]
    )
]


def concurrent_sessions(requests: list[ModelRequest], prompts: list[str], tokens: int = 8) -> dict:
    """Each prompt is one browser session running ``requests`` at once; all sessions start together.

    Checks every run's tokens and routing records against the same prompt run alone. Returns figures.
    """
    settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
    ref = {}
    for p in prompts:
        solo = GenerationRun(requests, p, settings)
        _drain(solo.start())
        ref[p] = [solo.token_ids(i) for i in range(len(requests))]
    for r in requests:
        release(r)  # the sessions race to load them
    builds = {}
    orig_build = runtime._build

    def counting_build(request, arch, progress):
        builds[request.key()] = builds.get(request.key(), 0) + 1
        return orig_build(request, arch, progress)

    runtime._build = counting_build
    runs, errors = [None] * len(prompts), []
    barrier = threading.Barrier(len(prompts))

    def session(i: int):
        try:
            barrier.wait()
            runs[i] = GenerationRun(requests, prompts[i], settings, session_id=f"session-{i}").start()
            runs[i].events = _drain(runs[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t0 = time.perf_counter()
    try:
        threads = [threading.Thread(target=session, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        runtime._build = orig_build
    seconds = time.perf_counter() - t0
    assert not errors, errors
    mismatches = 0
    for p, run in zip(prompts, runs):
        for slot, req in enumerate(requests):
            st_ = run.stats(slot)
            assert st_["status"] == "finished" and st_["new_tokens"] == tokens, st_
            ids = run.token_ids(slot)
            mismatches += ids != ref[p][slot]
            tok = load(req).tokenizer
            assert tok.decode(ids, skip_special_tokens=True) == run.text(slot)
            trace = run.routing(slot)
            if trace is not None:
                assert trace.steps[0].token_ids == tok(p).input_ids  # prefill routed this session's prompt
                assert [s.token_ids for s in trace.steps[1:]] == [[t] for t in ids[:-1]]
                recs = [e for e in run.events if isinstance(e, Routing) and e.slot == slot]
                assert [e.record for e in recs] == trace.steps
    return {
        "sessions": len(prompts),
        "models": len(requests),
        "seconds": seconds,
        "mismatches": mismatches,
        "builds": sorted(builds.values()),
    }


def test_concurrent_sessions_share_models_and_keep_their_own_records():
    r = concurrent_sessions([QWEN, MOE], PROMPTS)
    print(f"\n{r['sessions']} sessions x {r['models']} models: {r['seconds']:.2f} s")
    assert r["mismatches"] == 0
    assert r["builds"] == [1, 1]  # each model built once although 8 sessions asked at the same moment


# ----------------------------------------------------------------- cancel


def slow_steps(monkeypatch, request: ModelRequest, step_s: float) -> None:
    """Make every forward of ``request``'s model take at least ``step_s`` (a stand-in for a big model)."""
    model_ref = weakref.ref(load(request).model)
    cls = type(model_ref())
    orig = cls.forward

    def forward(self, *a, **k):
        if self is model_ref():
            time.sleep(step_s)
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, "forward", forward)


def cancel_latency(request: ModelRequest, after_tokens: int = 3) -> dict:
    """Seconds from cancel() to the Finished(reason="cancelled") event, and the step time before it."""
    lm = load(request)
    run = GenerationRun([request], "Tell me a long story", GenerationSettings(max_new_tokens=4096, ignore_eos=True))
    run.start()
    times = []
    while len(times) < after_tokens:
        times += [e.elapsed_s for e in run.poll(0.01) if isinstance(e, Token)]
    at_cancel = run.stats(0)["new_tokens"]
    run.cancel()
    t = time.perf_counter()
    fin = None
    while fin is None and time.perf_counter() - t < 30:
        fin = next((e for e in run.poll(0.001) if isinstance(e, Finished)), None)
    latency = time.perf_counter() - t
    run.join(5)
    assert fin is not None and fin.reason == "cancelled"
    free = lm.lock.acquire(timeout=1)
    if free:
        lm.lock.release()
    return {
        "cancel_s": latency,
        "step_s": (times[-1] - times[0]) / (len(times) - 1),
        "lock_free": free,
        "worker_alive": any(th.is_alive() for th in run._threads),
        "steps_after_cancel": run.stats(0)["new_tokens"] - at_cancel,
    }


def test_cancel_takes_effect_within_a_step(monkeypatch):
    slow_steps(monkeypatch, QWEN, 0.05)
    r = cancel_latency(QWEN)
    assert r["step_s"] >= 0.05
    assert r["steps_after_cancel"] <= 1, r  # at most the step in flight (its latency: bench/reliability.py)
    assert r["lock_free"] and not r["worker_alive"]


def test_cancel_session_stops_only_that_session():
    s = GenerationSettings(max_new_tokens=4096, ignore_eos=True)
    mine = [
        GenerationRun([QWEN], "a", s, session_id="tab-1").start(),
        GenerationRun([MOE], "b", s, session_id="tab-1").start(),
    ]
    other = GenerationRun(
        [QWEN], "c", GenerationSettings(max_new_tokens=30, ignore_eos=True), session_id="tab-2"
    ).start()
    time.sleep(0.3)
    assert set(generation.session_runs("tab-1")) == set(mine)
    assert cancel_session("tab-1") == 2
    for run in mine:
        events = _drain(run, 10)
        assert [e.reason for e in events if isinstance(e, Finished)] == ["cancelled"]
    _drain(other)
    assert other.stats(0)["reason"] == "length" and other.stats(0)["new_tokens"] == 30
    assert generation.session_runs("tab-1") == [] and cancel_session("tab-1") == 0


def test_a_run_nobody_polls_cancels_itself():
    run = GenerationRun(
        [QWEN], "hello", GenerationSettings(max_new_tokens=4096, ignore_eos=True), idle_timeout_s=0.5
    ).start()
    for th in run._threads:
        th.join(20)  # not run.join: joining counts as watching
    assert not any(th.is_alive() for th in run._threads)
    assert run.stats(0)["reason"] == "cancelled" and run.stats(0)["new_tokens"] < 4096
