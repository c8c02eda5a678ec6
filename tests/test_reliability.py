"""Reliability and security (issue 6): bad input, resource guards, OOM, concurrency, cancel.

The property test mutates catalog configs (delete / retype / tiny, huge, negative values / junk) and holds
the backend to: an ArchSpec with consistent counts, or an ArchLabError; never another exception.
"""
from __future__ import annotations

import copy
import gc
import json
import math
import threading
import time
import tracemalloc
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import catalog, configs
from backend.configs import LIMITS, load_config, parse_config_text
from backend.counting import count_params, formula_params
from backend.errors import ArchLabError
from backend.memory import kv_cache
from backend.spec import ArchSpec, arch_spec

# ----------------------------------------------------------------- config mutations

#: Fields a mutation may add even if the base config lacks them.
EXTRA_FIELDS = ("num_experts", "num_experts_per_tok", "n_routed_experts", "kv_lora_rank", "q_lora_rank",
                "sliding_window", "layer_types", "head_dim", "auto_map", "trust_remote_code", "model_type",
                "tie_word_embeddings", "rope_parameters", "n_group", "topk_group", "first_k_dense_replace",
                "attention_chunk_size", "no_rope_layers", "decoder_sparse_step", "mlp_only_layers")
#: Integers within the limits but too big for a quick meta build are capped (absurd ones are tested below).
CAPS = {"num_hidden_layers": 48, "n_layer": 48, "num_layers": 48, "hidden_size": 8192, "n_embd": 8192,
        "d_model": 8192, "intermediate_size": 32768, "vocab_size": 262144, "num_experts": 512,
        "n_routed_experts": 512, "num_local_experts": 512}
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                    max_leaves=6)
VALUES = {
    "tiny int": st.integers(-3, 8),
    "mid int": st.integers(9, 5000),
    "huge int": st.integers(10 ** 6, 10 ** 15),
    "negative": st.integers(-(10 ** 12), -1),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "string": st.text(max_size=8),
    "bool/none": st.sampled_from([True, False, None]),
    "nested junk": JUNK,
}
KINDS = tuple(VALUES) + ("delete", "retype")


@st.composite
def mutated_config(draw) -> tuple[dict, list[str]]:
    """(a catalog config with 1-4 mutations, the kinds of mutation applied)."""
    key = draw(st.sampled_from(catalog.keys()))
    d = copy.deepcopy(catalog.raw_config(key))
    kinds = []
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(sorted(d) + [f for f in EXTRA_FIELDS if f not in d]))
        kind = draw(st.sampled_from(KINDS))
        kinds.append(kind)
        if kind == "delete":
            d.pop(field, None)
        elif kind == "retype":
            v = d.get(field)
            d[field] = draw(st.sampled_from([str(v), [v], {"v": v}] + ([float(v)] if isinstance(v, int) else [])))
        else:
            v = draw(VALUES[kind])
            if field in CAPS and isinstance(v, int) and not isinstance(v, bool) and CAPS[field] < v <= LIMITS.get(
                    "num_experts" if "expert" in field else field, CAPS[field]):
                v = CAPS[field]
            d[field] = v
    return d, kinds


def check_backend(d: dict) -> str:
    """Run config -> spec -> counts -> KV; 'ok' or 'refused'. Fails the test on anything inconsistent."""
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
        assert formula_params(d) == count, (formula_params(d), count)
    assert kv.total_bytes >= 0 and kv.per_token_bytes >= 0
    return "ok"


@settings(max_examples=120, deadline=15_000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_config())
def test_mutated_configs_give_a_spec_or_archlaberror(case):
    d, _kinds = case
    t = time.perf_counter()
    check_backend(d)
    assert time.perf_counter() - t < 15


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except ArchLabError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("field,value", [("num_experts", 10 ** 9), ("num_hidden_layers", 10 ** 9),
                                         ("hidden_size", 10 ** 9), ("vocab_size", 10 ** 12),
                                         ("moe_intermediate_size", 10 ** 9), ("num_experts_per_tok", 10 ** 9),
                                         ("num_attention_heads", 2 ** 40)])
def test_absurd_sizes_refused_before_anything_is_built(field, value):
    d = dict(catalog.raw_config("qwen3-30b-a3b"), **{field: value}, _name_or_path=f"absurd {field}")
    t = time.perf_counter()
    with pytest.raises(ArchLabError, match="beyond any real model"):
        arch_spec(d)
    assert time.perf_counter() - t < 0.5  # refused from the JSON, no model built
    assert _peak_bytes(lambda: arch_spec(d)) < 2_000_000


def test_absurd_mla_rank_and_groups_refused():
    ds = catalog.raw_config("deepseek-v3")
    with pytest.raises(ArchLabError, match="kv_lora_rank"):
        arch_spec(dict(ds, kv_lora_rank=10 ** 9))
    with pytest.raises(ArchLabError, match="top-k"):
        arch_spec(dict(ds, num_experts_per_tok=300))  # more than the 256 experts: active would exceed total
    with pytest.raises(ArchLabError, match="groups"):
        arch_spec(dict(ds, n_group=7))


@pytest.mark.parametrize("text,match", [
    ("{", "not valid JSON"), ("[1, 2]", "JSON object"), (b"\xff\xfe{}", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (" " * (configs.MAX_CONFIG_BYTES + 1), "limit"),
])
def test_malformed_uploads(text, match):
    with pytest.raises(ArchLabError, match=match):
        parse_config_text(text)


def test_huge_upload_refused_without_parsing():
    text = '{"model_type": "gpt2", "junk": "' + "x" * (50 * configs.MAX_CONFIG_BYTES) + '"}'
    t = time.perf_counter()
    with pytest.raises(ArchLabError, match="limit"):
        parse_config_text(text)
    assert time.perf_counter() - t < 0.05


@pytest.mark.parametrize("d,match", [
    ({"model_type": "no_such_arch", "hidden_size": 8}, "unknown model_type"),
    ({"hidden_size": 8}, "no 'model_type'"),
    (dict(catalog.raw_config("gpt2"), auto_map={"AutoModelForCausalLM": "evil.Model"}), "remote code"),
    (dict(catalog.raw_config("gpt2"), trust_remote_code=True), "remote code"),
    (dict(catalog.raw_config("gpt2"), n_embd="768"), "integer"),
    (dict(catalog.raw_config("gpt2"), n_layer=-1), "positive"),
])
def test_bad_configs_named(d, match):
    with pytest.raises(ArchLabError, match=match):
        arch_spec(d)
