"""The static-cache decode path gives the same greedy tokens as transformers' generate."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.arch import architecture
from backend.live.fastdecode import GraphDecoder, can_use, pack_step, sample
from backend.live.miniature import miniature_config_dict
from backend.live.routers import router_modules


def _tiny(key):
    cfg = architecture.load_config(miniature_config_dict(key, "tiny"))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _decode(model, ids, n, use_graph=False):
    dec = GraphDecoder(model, ids.shape[1] + n + 1, use_graph=use_graph)
    out = dec.prefill(ids)
    tokens, routed = [], []
    tok = sample(out.logits, 0.0, 1.0, None)
    for i in range(n):
        packed, unpack = pack_step(tok, out)
        t, layers = unpack(packed.cpu())
        tokens.append(t)
        routed.append(layers)
        if i < n - 1:
            out = dec.step(tok)
            tok = sample(out.logits, 0.0, 1.0, None)
    dec.close()
    return tokens, routed


@pytest.mark.parametrize(
    "key", ["deepseek-v3", "llama4-scout", "gemma3-27b", "gpt-oss-20b", "qwen3-next-80b-a3b", "gpt2"]
)
def test_static_decode_matches_generate(key):
    model = _tiny(key)
    ids = torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    spec_window = getattr(model.config, "sliding_window", None) or getattr(model.config, "attention_chunk_size", None)
    n = max(12, (spec_window or 0) + 8)  # run past any window so the windowing is exercised
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, 10:].tolist()
        tokens, routed = _decode(model, ids, n)
    assert tokens == ref
    n_routers = len(router_modules(model))
    # prefill routes every prompt token, each later step one token, in every MoE layer
    assert len(routed[0]) == n_routers
    if n_routers:
        assert routed[0][0][1].shape[0] == 10 and all(r[0][1].shape[0] == 1 for r in routed[1:])


def test_sampling_respects_top_p():
    logits = torch.tensor([5.0, 4.9, -10.0, -10.0])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample(logits, 1.0, 0.5, g)) for _ in range(50)}
    assert picks <= {0, 1}
    assert int(sample(logits, 0.0, 1.0, None)) == 0


def test_fast_path_needs_a_gpu():
    assert not can_use(_tiny("qwen3-0.6b"))


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["qwen3-30b-a3b", "gpt-oss-20b", "deepseek-v3", "gemma3-27b", "llama4-scout"])
def test_graph_decode_matches_eager_and_generate_on_gpu(key):
    """CUDA graph replay = the same static path run eagerly = transformers' generate, past any window."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _tiny(key).to("cuda")
    window = getattr(model.config, "sliding_window", None) or getattr(model.config, "attention_chunk_size", None)
    n = max(16, (window or 0) + 8)
    ids = torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1)).to("cuda")
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, 10:].tolist()
        eager, eager_routes = _decode(model, ids, n, use_graph=False)
        graphed, graph_routes = _decode(model, ids, n, use_graph=True)
    assert graphed == eager == ref
    for a, b in zip(graph_routes, eager_routes):  # the routing the graph wrote back is the eager routing
        assert [(la, idx.tolist()) for la, idx, *_ in a] == [(la, idx.tolist()) for la, idx, *_ in b]


def test_decoder_reuse_across_prompts_matches_fresh():
    model = _tiny("qwen3-30b-a3b")
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randint(0, model.config.vocab_size, (1, n), generator=g) for n in (9, 5))
    with torch.inference_mode():
        fresh_b, _ = _decode(model, b, 8)
        dec = GraphDecoder(model, 64, use_graph=False)
        for ids in (a, b):  # a, then b on the same (reset) decoder
            dec.reset()
            out = dec.prefill(ids)
            toks = []
            for _ in range(8):
                tok = sample(out.logits, 0.0, 1.0, None)
                toks.append(int(tok))
                out = dec.step(tok)
        dec.close()
    assert toks == fresh_b
