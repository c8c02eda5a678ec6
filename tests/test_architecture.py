"""A source is resolved once into an Architecture, which every layer below is handed."""

import threading

from backend.arch import architecture, configs, spec
from backend.arch.architecture import Architecture, resolve
from backend.live import runtime


def test_resolve_gives_one_object_per_config_and_passes_an_architecture_through():
    a = resolve("qwen3-0.6b")
    assert isinstance(a, Architecture) and resolve("qwen3-0.6b") is a and resolve(a) is a
    assert a.label == a.entry.name
    assert a.entry.key == "qwen3-0.6b" and resolve(a.as_dict()).entry is None
    assert a.spec is a.spec and a.counts.total == a.formula_counts.total


def test_lazy_parts_are_built_once_under_concurrency(monkeypatch):
    calls = []
    real = spec.read_spec
    monkeypatch.setattr(spec, "read_spec", lambda cfg, model: calls.append(1) or real(cfg, model))
    a = resolve({**configs.catalog.raw_config("gpt2"), "_name_or_path": "once-test"})
    threads = [threading.Thread(target=lambda: a.spec) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_a_load_resolves_its_source_once(monkeypatch):
    """runtime.load validates each config (the model's and its miniature's) and reads its spec once."""
    built, specs = [], []
    real_build, real_spec = configs.build_config, spec.read_spec
    monkeypatch.setattr(configs, "build_config", lambda canon: built.append(canon) or real_build(canon))
    monkeypatch.setattr(spec, "read_spec", lambda cfg, model: specs.append(cfg) or real_spec(cfg, model))
    source = {**configs.catalog.raw_config("qwen3-30b-a3b"), "_name_or_path": "resolve-once"}
    request = runtime.ModelRequest(source, size="tiny", device="cpu")
    try:
        lm = runtime.load(request)
        assert lm.arch is architecture.resolve(lm.arch) and lm.arch.spec is lm.spec
        # the full config and its miniature, each validated and read at most once (the miniature's config may
        # already be resolved by an earlier test: same canonical text, same Architecture)
        assert built[0] == architecture.resolve(source).canon and len(built) == len(set(built)) <= 2
        assert len(specs) == len(built)
    finally:
        runtime.release(request)


def test_a_config_with_every_layer_linear_attention_is_read():
    """No layer has softmax attention (an all-linear Qwen3-Next, the fixed-state ablation of bench/effects.py):
    the spec still reads, every layer is linear, and the KV cache is only the fixed linear-attention state."""
    from backend.arch import catalog, memory

    d = catalog.raw_config("qwen3-next-80b-a3b")
    d["layer_types"] = ["linear_attention"] * d["num_hidden_layers"]
    arch = architecture.resolve(d)
    assert {layer.attention for layer in arch.spec.layers} == {"linear"}
    short, long = memory.kv_cache(arch, 1024), memory.kv_cache(arch, 65536)
    assert short.per_token_bytes == 0 and short.total_bytes == long.total_bytes > 0


def test_llama4_equal_rope_factors_do_not_warn_on_every_build():
    """Llama 4's real configs set high_freq_factor == low_freq_factor (1.0); transformers warned on every build
    (50 lines in one zoo sizing). Equal factors are quiet now; reversed ones still warn."""
    import logging

    from backend.arch import libs
    from backend.arch.configs import build_config, canonical

    libs.load()
    rope = logging.getLogger("transformers.modeling_rope_utils")
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    level = rope.level
    rope.addHandler(handler)
    rope.setLevel(logging.WARNING)
    try:
        build_config(canonical("llama4-scout"))
        rope.warning(
            "`rope_parameters`'s high_freq_factor field must be greater than low_freq_factor, got "
            "high_freq_factor=1.0 and low_freq_factor=4.0"
        )
    finally:
        rope.removeHandler(handler)
        rope.setLevel(level)
    assert not [m for m in seen if "high_freq_factor=1.0 and low_freq_factor=1.0" in m]
    assert [m for m in seen if "high_freq_factor=1.0 and low_freq_factor=4.0" in m]
