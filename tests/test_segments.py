"""Segmented decode: one graph per segment with hand-offs gives the tokens and routing of one piece."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.arch import architecture
from backend.arch.spec import decoder_layers
from backend.live.fastdecode import GraphDecoder, can_use, pack_step, sample
from backend.live.miniature import miniature_config_dict
from backend.live.segments import device_labels, hand_off_count


def _tiny(key, device="cpu"):
    cfg = architecture.load_config(miniature_config_dict(key, "tiny"))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval().to(device)


def _three_segments(model) -> dict:
    """First half of the decoder layers, second half, the LM head: three segments on the model's device."""
    layers = set(decoder_layers(model))
    names = [n for n, m in model.named_modules() if m in layers]
    labels = {n: ("a" if i < len(names) // 2 else "b") for i, n in enumerate(names)}
    labels["lm_head"] = "head"
    return labels


def _run(model, ids, n, **kw):
    dec = GraphDecoder(model, ids.shape[1] + n + 1, **kw)
    out = dec.prefill(ids)
    tok = sample(out.logits, 0.0, 1.0, None)
    tokens, routes = [], []
    for i in range(n):
        packed, unpack = pack_step(tok, out)
        t, layers = unpack(packed.cpu())
        tokens.append(t)
        routes.append([(layer, idx.tolist(), w.round(decimals=4).tolist()) for layer, idx, w in layers])
        if i < n - 1:
            out = dec.step(tok)
            tok = sample(out.logits, 0.0, 1.0, None)
    seg = dec.segmenter
    info = {
        "segments": len(seg.segments) if seg else 1,
        "handoffs": hand_off_count(seg),
        "graphs": len(dec.graphs),
        "error": dec.graph_error,
    }
    dec.close()
    return tokens, routes, info


@pytest.mark.parametrize("key", ["qwen3-30b-a3b", "deepseek-v3", "gpt-oss-20b", "llama3-8b"])
def test_segments_hand_off_and_match_one_piece_on_cpu(key):
    model = _tiny(key)
    ids = torch.randint(0, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole, whole_routes, _ = _run(model, ids, 12, use_graph=False)
        split, split_routes, info = _run(model, ids, 12, use_graph=False, segments=_three_segments(model))
    assert info["segments"] == 3 and info["handoffs"] >= 2  # hidden states into "b", into the head
    assert split == whole and split_routes == whole_routes
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed on close


def test_one_device_has_no_segments():
    model = _tiny("qwen3-30b-a3b")
    assert device_labels(model) == {}
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "lm_head": "cpu"}
    assert device_labels(model) == {"model.embed_tokens": "cuda:0", "model.layers": "cuda:1", "lm_head": "cpu"}
    assert not can_use(model)  # CPU parameters: the plain path


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["qwen3-30b-a3b", "llama3-8b"])
def test_segment_graphs_on_one_gpu_match_one_graph(key):
    """The sharded fast path's machinery on one GPU: three graphs with hand-offs = one graph, routing on."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _tiny(key, "cuda")
    ids = torch.randint(0, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.inference_mode():
        one, one_routes, one_info = _run(model, ids, 20)
        split, split_routes, info = _run(model, ids, 20, segments=_three_segments(model))
    assert one_info["graphs"] == 1 and info["graphs"] == 3 and info["error"] is None
    assert split == one and split_routes == one_routes


@pytest.mark.gpu
def test_sharded_miniature_spans_two_gpus_and_streams_on_the_fast_path():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from backend.live.generation import GenerationRun, GenerationSettings
    from backend.live.runtime import ModelRequest, load, release

    runs = {}
    for device in ("cuda", "multi-gpu"):
        req = ModelRequest("qwen3-30b-a3b", mode="miniature", size="small", device=device)
        lm = load(req)
        run = GenerationRun([req], "The history of", GenerationSettings(max_new_tokens=24, ignore_eos=True))
        run.start().join(300)
        runs[device] = (run.token_ids(0), run.stats(0), run.routing(0), set(lm.bytes_per_device))
        release(req)
    (one, one_stats, one_trace, _), (many, many_stats, many_trace, devices) = runs["cuda"], runs["multi-gpu"]
    assert len({d for d in devices if d.startswith("cuda")}) >= 2
    assert many_stats["fast_path"] and one_stats["fast_path"]
    assert many == one and len(many) == 24
    assert [s.layers.keys() for s in many_trace.steps] == [s.layers.keys() for s in one_trace.steps]
    assert all(
        (a.layers[k][0] == b.layers[k][0]).all() for a, b in zip(many_trace.steps, one_trace.steps) for k in a.layers
    )
