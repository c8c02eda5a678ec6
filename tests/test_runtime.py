"""Runtime: placement over (fake) GPUs, full-size random models, pretrained checkpoints, cache."""

import json

import pytest
import torch

from backend.arch.errors import ArchLabError
from backend.arch.memory import GiB, weight_bytes
from backend.live import memcheck
from backend.live.generation import GenerationRun, GenerationSettings
from backend.live.runtime import (
    ModelRequest,
    Placement,
    _random_model,
    check_checkpoint,
    hardware,
    load,
    plan_placement,
    release,
    resolve_checkpoint,
)


def _hw(gpus=(), ram=16.0):
    return {
        "cuda": bool(gpus),
        "cpu_threads": 2,
        "ram_available_gib": ram,
        "gpus": [{"index": i, "name": "fake", "total_gib": g, "free_gib": g} for i, g in enumerate(gpus)],
    }


def test_hardware_shape():
    hw = hardware()
    assert set(hw) >= {"cuda", "gpus", "cpu_threads"} and hw["cpu_threads"] >= 1
    assert hw["cuda"] == torch.cuda.is_available()


def test_placement_single_gpu_when_it_fits():
    p = plan_placement("qwen3-4b", "auto", "auto", _hw([80.0]))
    assert p.kind == "cuda" and p.dtype == "bf16" and p.device_map == {"": "cuda:0"}
    assert p.need_bytes == weight_bytes("qwen3-4b", "bf16")


def test_placement_shards_large_model_over_fake_gpus():
    need = weight_bytes("qwen3-32b", "bf16")  # ~61 GiB
    p = plan_placement("qwen3-32b", "auto", "auto", _hw([24.0] * 4))
    assert p.kind == "multi-gpu"
    assert set(p.device_map.values()) == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    # whole decoder layers only, in order, every layer placed once
    layers = [k for k in p.device_map if k.startswith("model.layers.")]
    assert all(k.count(".") == 2 for k in layers) and len(layers) == 64
    order = [int(p.device_map[k].split(":")[1]) for k in sorted(layers, key=lambda k: int(k.split(".")[-1]))]
    assert order == sorted(order)
    assert need > 24 * GiB * 2


def test_placement_refusals_say_how_much():
    with pytest.raises(ArchLabError, match=r"needs .* GiB"):
        plan_placement("qwen3-32b", "cuda", "auto", _hw([24.0]))
    with pytest.raises(ArchLabError, match=r"needs .* GiB"):
        plan_placement("deepseek-v3", "multi-gpu", "bf16", _hw([80.0] * 8))
    with pytest.raises(ArchLabError, match=r"needs .* GiB .*RAM"):
        plan_placement("qwen3-32b", "auto", "auto", _hw([], ram=16))
    with pytest.raises(ArchLabError, match="no CUDA GPU"):
        plan_placement("gpt2", "cuda", "auto", _hw([]))
    assert plan_placement("gpt2", "auto", "auto", _hw([], ram=16)).kind == "cpu"


def test_full_mode_refused_when_too_big():
    with pytest.raises(ArchLabError, match=r"needs [\d,.]+ GiB"):
        load(ModelRequest("deepseek-v3", mode="full", device="cpu"))


def test_full_mode_random_gpt2_on_cpu():
    req = ModelRequest("gpt2", mode="full", device="cpu")
    lm = load(req)
    assert lm.params == 124_439_808  # the official count: embeddings stay tied
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight
    assert lm.bytes_per_device["cpu"] == pytest.approx(weight_bytes("gpt2", "fp32"), rel=0.02)
    assert load(req) is lm  # cached
    release(req)
    assert load(req) is not lm
    release(req)


def test_materialise_over_a_device_map_matches_a_plain_build():
    """The sharded path (meta model, to_empty per module, init) gives the same buffers and a working model."""
    from transformers import AutoModelForCausalLM

    from backend.arch.architecture import load_config
    from backend.live.miniature import miniature_config_dict

    cfg = load_config(miniature_config_dict("gemma3-27b", "tiny"))
    n = cfg.num_hidden_layers
    dmap = {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(n)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    m = _random_model(cfg, Placement("cpu", "fp32", dmap, 0), seed=0)
    ref = AutoModelForCausalLM.from_config(cfg)
    for name, b in ref.named_buffers():
        assert torch.equal(dict(m.named_buffers())[name], b), name
    w = m.model.layers[0].self_attn.q_proj.weight
    assert 0.01 < float(w.detach().std()) < 0.05  # initialised, not left empty
    with torch.inference_mode():
        assert torch.isfinite(m(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    req = ModelRequest("qwen3-30b-a3b", size="tiny")
    lm = load(req)
    path = tmp_path_factory.mktemp("ckpt")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return req, path


def _greedy(req):
    run = GenerationRun([req], "The quick brown fox", GenerationSettings(max_new_tokens=12, ignore_eos=True))
    run.start().join(60)
    assert run.stats(0)["status"] == "finished", run.stats(0)
    return run.token_ids(0)


def test_pretrained_roundtrip_generates_same_tokens(checkpoint):
    req, path = checkpoint
    assert any(p.suffix == ".safetensors" for p in path.iterdir())
    preq = ModelRequest("qwen3-30b-a3b", mode="pretrained", path=str(path), device="cpu", dtype="fp32")
    lm = load(preq)
    assert lm.spec.moe is not None and lm.label.endswith("(pretrained)")
    assert _greedy(preq) == _greedy(req)
    release(preq)


def test_pickle_only_folder_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ArchLabError, match="pickle"):
        check_checkpoint(tmp_path)


def test_missing_files_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ArchLabError, match=r"missing: model\.safetensors.*tokenizer\.json"):
        load(ModelRequest("gpt2", mode="pretrained", path=str(tmp_path)))


def test_missing_shard_named(checkpoint, tmp_path):
    _req, path = checkpoint
    for f in path.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(ArchLabError, match="model-00001-of-00002.safetensors"):
        check_checkpoint(tmp_path)


def test_remote_code_refused(checkpoint, tmp_path):
    _req, path = checkpoint
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    d = json.loads((tmp_path / "config.json").read_text())
    d["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ArchLabError, match="remote code"):
        load(ModelRequest("x", mode="pretrained", path=str(tmp_path)))


def test_unknown_repo_not_downloaded():
    with pytest.raises(ArchLabError, match="nothing is downloaded"):
        resolve_checkpoint("no-such-org/no-such-model-xyz")


def test_bad_requests():
    for req in (
        ModelRequest("gpt2", mode="huge"),
        ModelRequest("gpt2", device="tpu"),
        ModelRequest("gpt2", dtype="int3"),
        ModelRequest("gpt2", mode="pretrained"),
        ModelRequest("gpt2", size="giant"),
        ModelRequest("no-such-model"),
    ):
        with pytest.raises(ArchLabError):
            load(req)


@pytest.mark.gpu
def test_miniature_on_gpu():
    req = ModelRequest("deepseek-v3", device="cuda")
    lm = load(req)
    assert lm.device_summary.startswith("cuda") and lm.dtype == "bf16"
    assert memcheck.placement_check(lm.model, lm.device_map)["misplaced_count"] == 0
    assert len(_greedy(req)) == 12
    release(req)


def _generate(model, n=16):
    ids = torch.arange(3, 13).unsqueeze(0).to(model.get_input_embeddings().weight.device)
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, 10:].tolist()


@pytest.mark.gpu
def test_sharded_over_gpus_matches_one_gpu_and_its_device_map():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    one = ModelRequest("qwen3-4b", mode="full", device="cuda", dtype="fp32")
    two = ModelRequest("qwen3-4b", mode="full", device="multi-gpu", dtype="fp32")
    lm = load(one)
    state = {k: v.to("cpu") for k, v in lm.model.state_dict().items()}
    ref = _generate(lm.model)
    release(one)
    lm = load(two)
    lm.model.load_state_dict(state)
    check = memcheck.placement_check(lm.model, lm.device_map)
    assert check["misplaced_count"] == 0, check["misplaced"]
    assert len([d for d in check["actual_bytes"] if d.startswith("cuda")]) >= 2
    assert _generate(lm.model) == ref
    assert len(_greedy(two)) == 12  # and through the app's streaming path
    release(two)


def test_multi_gpu_placement_is_balanced_even_when_one_gpu_would_do():
    # qwen3-4b fits on one of these GPUs; asked to shard, it must use both, about evenly
    p = plan_placement("qwen3-4b", "multi-gpu", "bf16", _hw([80.0, 80.0]))
    layers = [k for k in p.device_map if k.startswith("model.layers.")]
    share = sum(p.device_map[k] == "cuda:0" for k in layers) / len(layers)
    assert set(p.device_map.values()) == {"cuda:0", "cuda:1"} and 0.4 <= share <= 0.6
    # a model that needs most of both GPUs still gets a plan that fits
    p = plan_placement("qwen3-32b", "multi-gpu", "bf16", _hw([40.0, 40.0]))
    assert set(p.device_map.values()) == {"cuda:0", "cuda:1"}
