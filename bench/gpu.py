"""GPU benchmark, one device call: speed against the bandwidth floor, memory predicted vs measured.

    python bench/gpu.py [--smoke] [--only llama3-8b,qwen3-30b-a3b] [--tokens 128] [--no-models] [--out DIR]
                        [--profile] [--segmented] [--two-gpu] [--compile-cache KEY]

The device image has transformers 5.17: carry the 5.23 wheels (``.whl/``, see the device README) and start
with ``pip install --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site``.

Per model (random bf16 weights, batch 1): parameters, active parameters, bandwidth floor
(2 bytes × active / measured copy bandwidth), HF ``generate`` tok/s, our fast path's tok/s with
streaming (one host copy per token) and routing capture on, weights and KV cache predicted by
``backend.arch.memory`` vs measured with ``torch.cuda.memory_allocated``, and the Playground's own
path end to end ("app": ``GenerationRun`` in a worker thread, detokenizing and emitting events). Models too large for the GPU
run "full width, fewer layers" at two depths; the per-layer cost is extrapolated to full depth.
Sharding: a model split by a device map between the GPU and the CPU generates the same greedy tokens
as on the GPU alone; with several GPUs, the app's loader shards a model over all of them (same
weights as on one GPU) and the tokens, the device map vs where parameters are, and the speed (HF
generate and our streaming path) are compared. ``--no-models`` runs only these checks.
"no-krn" is the fast path without the fused Triton decode kernels (``decode_kernels.py``), "ours" with them;
"=eager": the fast path's greedy pick equals the next token of the same step run eagerly through transformers'
own modules, fed that run's tokens (teacher-forced; ``graph_agree`` in the JSON is the free-running count). ``--segmented`` decodes each model as three graphs with hand-offs on its one GPU (the sharded fast
path's machinery); ``--two-gpu`` (several GPUs): Llama 4 Scout whole over all GPUs against the floor with
memory planned vs allocated per GPU, two models on two GPUs vs alone, and the one-vs-sharded check for a
MoE model too; ``--compile-cache KEY`` times torch.compile's warm-up in two fresh processes sharing the
persistent cache.
Results go to bench/results/gpu-<gpu>x<count>[-tag].json (and --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend.arch import (  # noqa: E402
    architecture,  # noqa: E402
    catalog,
    memory,
)
from backend.live import depth  # noqa: E402
from backend.live.fastdecode import GraphDecoder, pack_step, sample  # noqa: E402

GiB = 1024**3

# key, depths (None = full depth), contexts for the KV check
PLAN = [
    ("llama3-8b", None),  # dense GQA: the dense target
    ("olmo2-7b", None),  # MHA
    ("qwen3-30b-a3b", None),  # MoE, GQA: the MoE target
    ("gpt-oss-20b", None),  # MoE + sliding-window layers
    ("deepseek-v3", (4, 5)),  # MLA + MoE, full width: 3 dense + 1 or 2 MoE layers
]
SMOKE = [("qwen3-0.6b", None), ("qwen3-30b-a3b", (4,)), ("deepseek-v3", (4,))]
CONTEXTS = (2048, 16384)


def log(*a) -> None:
    print(*a, flush=True)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    n = 2 * GiB
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / sorted(times)[len(times) // 2]


def truncated(key: str, layers: int | None) -> dict:
    return architecture.with_layers(key, layers) if layers else catalog.raw_config(key)


def build(cfg_dict: dict):
    """The app's own loader: random bf16 weights on one GPU (``runtime.load``, with its memory guard)."""
    from backend.live import runtime

    request = runtime.ModelRequest(cfg_dict, mode="full", device="cuda", dtype="bf16")
    return request, runtime.load(request).model


def measure_kv(model, cfg_dict: dict, context: int) -> dict:
    """Bytes a static cache of ``context`` tokens takes, measured vs predicted (HF stores MLA expanded)."""
    from transformers import StaticCache

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    cache = StaticCache(config=model.config, max_cache_len=context)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), device="cuda")
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    del out
    torch.cuda.synchronize()
    measured = torch.cuda.memory_allocated() - before
    layout = "latent"  # transformers >= 5.2x caches MLA's compressed latent + RoPE key
    predicted = memory.kv_cache(cfg_dict, context, 1, "bf16", mla_layout=layout).total_bytes
    del cache
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "context": context,
        "predicted_bytes": predicted,
        "measured_bytes": int(measured),
        "error_pct": 100 * (measured - predicted) / predicted,
    }


def hf_generate_speed(model, n: int) -> float:
    ids = prompt(model)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    return (out.shape[1] - ids.shape[1]) / dt


WARM = 4  # steps (warm-up, capture, compile) left out of the steady-state rate


def prompt(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, model.config.vocab_size, (1, 32), generator=g).to("cuda")


def fast_speed(
    model,
    n: int,
    use_graph: bool = True,
    routing: bool = True,
    compile: bool = False,
    kernels: bool = True,
    segments: dict | None = None,
) -> dict:
    """Our streaming loop: one host copy per token (token + every layer's routing).

    tok/s is the steady decode rate after WARM steps; TTFT and the first steps are reported apart.
    ``kernels``: the fused Triton decode kernels; ``segments``: split the step into graphs (see segments.py).
    """
    ids = prompt(model)
    with torch.inference_mode():
        t_init = time.perf_counter()
        dec = GraphDecoder(
            model,
            max_cache_len=32 + n + 1,
            capture_routing=routing,
            use_graph=use_graph,
            compile=compile,
            kernels=kernels,
            segments=segments,
        )
        installed = dec.kernels.summary() if dec.kernels is not None else None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = dec.prefill(ids)
        tok = sample(out.logits, 0.0, 1.0, None)
        packed, unpack = pack_step(tok, out)
        first, _ = unpack(packed.cpu())
        ttft = time.perf_counter() - t0
        tokens, routed = [first], 0
        t1 = time.perf_counter()
        for i in range(n - 1):
            if i == WARM:
                t_steady = time.perf_counter()
            out = dec.step(tok)
            tok = sample(out.logits, 0.0, 1.0, None)
            packed, unpack = pack_step(tok, out)
            t, layers = unpack(packed.cpu())  # the one sync of the step
            tokens.append(t)
            routed += len(layers)
        end = time.perf_counter()
        graph_error = dec.graph_error
        graphed = dec.graph is not None
        graphs = len(dec.graphs)
        dec.close()
    return {
        "tok_s": (n - 1 - WARM) / (end - t_steady),
        "ttft_s": ttft,
        "warm_s": t_steady - t1,
        "setup_s": t0 - t_init,
        "graph": graphed,
        "graphs": graphs,
        "graph_error": graph_error,
        "compiled": dec.compiled,
        "routing_records": routed,
        "tokens": tokens,
        "kernels": installed,
    }


def eager_tokens(model, n: int) -> list[int]:
    ids = torch.manual_seed(0) and torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.inference_mode():
        out = model.generate(
            ids.to(model.get_input_embeddings().weight.device), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, 16:].tolist()


def sharding_check(key: str = "qwen3-0.6b", n: int = 24) -> dict:
    """One GPU: greedy tokens of a model run whole on the GPU vs split by a device map between the GPU
    and the CPU, each part executing where it sits (accelerate moves the hidden states across), and the
    device map checked against where every parameter is."""
    from accelerate import dispatch_model, infer_auto_device_map
    from transformers import AutoModelForCausalLM

    from backend.arch.architecture import arch_spec
    from backend.live.memcheck import placement_check

    cfg = architecture.load_config(key)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = eager_tokens(model.to("cuda:0"), n)
    model.to("cpu")
    weights = architecture.count_params(key).total * 4
    dmap = infer_auto_device_map(
        model,
        max_memory={0: int(weights * 0.55), "cpu": 64 * GiB},
        no_split_module_classes=[arch_spec(key).decoder_layer_class],
    )
    model.load_state_dict(state)
    # main_device="cpu": CPU layers run on the CPU (the default would offload them, running all on the GPU)
    model = dispatch_model(model, device_map=dmap, main_device="cpu")
    split = eager_tokens(model, n)
    dmap = {k: (f"cuda:{v}" if isinstance(v, int) else v) for k, v in dmap.items()}
    check = placement_check(model, dmap)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "model": key,
        "kind": "gpu+cpu",
        "devices": sorted(set(dmap.values())),
        "bytes_by_device": check["actual_bytes"],
        "planned_bytes_by_device": check["planned_bytes"],
        "misplaced": check["misplaced_count"],
        "tokens_equal": ref == split,
        "agree": sum(a == b for a, b in zip(ref, split)),
        "n": n,
    }


def _stream_speed(request, tokens: int) -> dict:
    """Our streaming path (GenerationRun, routing on) on a loaded request: steady tok/s and path; ``serial_tok_s``:
    the same with the fast path's step pipelining off (``generation.PIPELINE_STEPS``), runs alternating, the best
    of two each; ``serial_tokens_equal``: both paths gave the same tokens."""
    from backend.live import generation
    from backend.live.generation import GenerationRun, GenerationSettings

    def once(pipelined: bool):
        generation.PIPELINE_STEPS = pipelined
        try:
            run = GenerationRun([request], "The history of", GenerationSettings(max_new_tokens=tokens, ignore_eos=True))
            run.start().join(300)
        finally:
            generation.PIPELINE_STEPS = True
        return run

    once(True)  # warms up (and captures the graph on one GPU)
    runs = {True: [], False: []}
    for pipelined in (True, False, True, False):
        runs[pipelined].append(once(pipelined))
    best = {p: max(rs, key=lambda r: r.stats(0)["tokens_per_s"] or 0) for p, rs in runs.items()}
    run, s = best[True], best[True].stats(0)
    trace = run.routing(0)
    return {
        "tok_s": s["tokens_per_s"],
        "fast_path": s["fast_path"],
        "device": s["device"],
        "status": s["status"],
        "error": s["error"],
        "tokens": run.token_ids(0),
        "routing_steps": len(trace.steps) if trace else 0,
        "serial_tok_s": best[False].stats(0)["tokens_per_s"],
        "serial_tokens_equal": best[False].token_ids(0) == run.token_ids(0),
    }


def multi_gpu_check(key: str = "llama3-8b", tokens: int = 64) -> dict:
    """Several GPUs: the app's own loader on one GPU and sharded over all (same weights): greedy tokens,
    device map vs where the parameters are, and speed (HF generate and our streaming path) on each."""
    from backend.live import memcheck, runtime

    one = runtime.ModelRequest(key, mode="full", device="cuda", dtype="bf16")
    many = runtime.ModelRequest(key, mode="full", device="multi-gpu", dtype="bf16")
    lm = runtime.load(one)
    state = {k: v.to("cpu") for k, v in lm.model.state_dict().items()}
    res = {"model": key, "kind": f"{torch.cuda.device_count()} GPUs", "tokens": tokens}
    ref = eager_tokens(lm.model, 24)
    res["one_gpu"] = {"hf_tok_s": hf_generate_speed(lm.model, 32), **_stream_speed(one, tokens)}
    runtime.release(one)
    lm = runtime.load(many)
    lm.model.load_state_dict(state)
    del state
    check = memcheck.placement_check(lm.model, lm.device_map)
    res["sharded"] = {
        "hf_tok_s": hf_generate_speed(lm.model, 32),
        **_stream_speed(many, tokens),
        "bytes_by_device": check["actual_bytes"],
        "planned_bytes_by_device": check["planned_bytes"],
        "misplaced": check["misplaced_count"],
    }
    split = eager_tokens(lm.model, 24)
    res.update(
        tokens_equal=ref == split,
        agree=sum(a == b for a, b in zip(ref, split)),
        n=24,
        devices=sorted(check["actual_bytes"]),
    )
    res["stream_tokens_equal"] = res["sharded"].pop("tokens") == res["one_gpu"].pop("tokens")
    for k in ("hf_tok_s", "tok_s"):
        res[f"sharded_vs_one_{k}"] = res["sharded"][k] / res["one_gpu"][k]
    runtime.release(many)
    return res


def scout_whole(bw: float, tokens: int = 64, key: str = "llama4-scout") -> dict:
    """A model larger than one GPU at full depth ("all GPUs (sharded)" in the Playground): random bf16 weights,
    the app's streaming path with routing, tok/s against the floor (one GPU's copy bandwidth over the bytes of
    active weights), and weights predicted per GPU by the device plan vs measured (allocated) on each GPU."""
    from backend.live import memcheck, runtime

    count = architecture.count_params(key)
    n = torch.cuda.device_count()
    gc.collect()
    torch.cuda.empty_cache()
    base = [torch.cuda.memory_allocated(i) for i in range(n)]
    request = runtime.ModelRequest(key, mode="full", device="multi-gpu", dtype="bf16")
    t = time.perf_counter()
    lm = runtime.load(request)
    build_s = time.perf_counter() - t
    measured = {f"cuda:{i}": torch.cuda.memory_allocated(i) - base[i] for i in range(n)}
    check = memcheck.placement_check(lm.model, lm.device_map)
    app = _stream_speed(request, tokens)
    decoder = lm.decoder
    res = {
        "model": key,
        "params": count.total,
        "active": count.active,
        "build_s": build_s,
        "floor_tok_s": bw / (2 * count.active),
        "app_tok_s": app["tok_s"],
        "fast_path": app["fast_path"],
        "routing_steps": app["routing_steps"],
        "status": app["status"],
        "error": app["error"],
        "graphs": len(decoder.graphs) if decoder is not None else 0,
        "graph_error": decoder.graph_error if decoder is not None else None,
        "planned_bytes_by_device": check["planned_bytes"],
        "weights_measured_by_device": measured,
        "misplaced": check["misplaced_count"],
        "weights_predicted_total": memory.weight_bytes(key, "bf16"),
    }
    res["pct_floor"] = 100 * res["app_tok_s"] / res["floor_tok_s"]
    runtime.release(request)
    return res


def two_models(keys=("llama3-8b", "qwen3-30b-a3b"), tokens: int = 128) -> dict:
    """Several models and several GPUs: the default placement puts each on its own GPU; each model's app-path
    tok/s alone, then both streaming at once in one run."""
    from backend.live import runtime
    from backend.live.generation import GenerationRun, GenerationSettings

    requests = [runtime.ModelRequest(k, mode="full", device="auto", dtype="bf16") for k in keys]
    solo = {}
    for k, r in zip(keys, requests):
        lm = runtime.load(r)
        solo[k] = {"device": lm.device_summary, **{x: v for x, v in _stream_speed(r, tokens).items() if x != "tokens"}}
    together = {}
    for _ in range(2):  # the last of two runs
        run = GenerationRun(requests, "The history of", GenerationSettings(max_new_tokens=tokens, ignore_eos=True))
        run.start().join(600)
        together = {k: run.stats(i) for i, k in enumerate(keys)}
    res = {
        "models": list(keys),
        "solo": solo,
        "together": {
            k: {"tok_s": v["tokens_per_s"], "device": v["device"], "fast_path": v["fast_path"]}
            for k, v in together.items()
        },
    }
    res["together_vs_solo"] = {k: res["together"][k]["tok_s"] / solo[k]["tok_s"] for k in keys}
    res["own_gpu_each"] = len({solo[k]["device"] for k in keys}) == len(keys)
    for r in requests:
        runtime.release(r)
    return res


def compile_warmup(key: str, tokens: int = 32) -> dict:
    """Seconds the first decode steps take with torch.compile (one process; run twice to see the cache)."""
    from backend.live.fastdecode import compile_cache_dir

    folder = compile_cache_dir()
    cfg = catalog.raw_config(key)
    request, model = build(cfg)
    res = fast_speed(model, tokens, compile=True)
    return {
        "model": key,
        "warm_s": res["warm_s"],
        "tok_s": res["tok_s"],
        "compiled": res["compiled"],
        "graph_error": res["graph_error"],
        "cache": str(folder),
    }


def compile_cache_check(key: str) -> dict:
    """torch.compile's warm-up in a fresh process with an empty cache, then in a second fresh process that
    finds the first one's persistent cache (runs/cache/torch-compile under ARCHLAB_RUNS_DIR)."""
    import subprocess
    import tempfile

    runs = tempfile.mkdtemp(prefix="archlab-compile-")
    out = []
    for _ in range(2):
        env = dict(os.environ, ARCHLAB_RUNS_DIR=runs, PYTHONUNBUFFERED="1")
        p = subprocess.run(
            [sys.executable, str(Path(__file__)), "--compile-warmup", key],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        line = [x for x in p.stdout.splitlines() if x.startswith("COMPILE ")]
        out.append(json.loads(line[-1][8:]) if line else {"error": p.stderr[-500:]})
    return {"model": key, "cold": out[0], "warm": out[1]}


def launches(model, kernels: bool) -> dict:
    """CUDA kernels (and copies) one decode step runs, counted by the profiler on an eager step: a captured
    graph replays exactly these. With and without the fused kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    ids = prompt(model)
    with torch.inference_mode():
        dec = GraphDecoder(model, 64, use_graph=False, kernels=kernels)
        out = dec.prefill(ids)
        tok = sample(out.logits, 0.0, 1.0, None)
        for _ in range(2):
            out = dec.step(tok)
            tok = sample(out.logits, 0.0, 1.0, None)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.step(tok)
            torch.cuda.synchronize()
        dec.close()
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    by_name: dict[str, list] = {}
    for e in events:
        agg = by_name.setdefault(e.name[:70], [0, 0.0])
        agg[0] += 1
        agg[1] += e.device_time_total
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:14]
    return {
        "launches": len(events),
        "gpu_ms": sum(e.device_time_total for e in events) / 1e3,
        "top": [{"kernel": k, "count": c, "us": round(t, 1)} for k, (c, t) in top],
    }


def forced_agreement(model, reference: list[int]) -> dict:
    """Teacher-forced: the fast path (graph + fused kernels) and the eager path (transformers' modules) both fed
    the reference's tokens. How often their greedy picks agree, how far their logits are apart (relative L2),
    and, where they disagree, the eager path's top-1 minus top-2 logit gap over the logits' standard deviation
    (a near-tie that rounding can flip) — this isolates per-step numerics from a run drifting after one tie."""
    ids = prompt(model)
    hits, errs, gaps = 0, [], []

    def logits(**kw) -> list[torch.Tensor]:
        # one decoder at a time: the fused kernels are installed on the model while a decoder holds them
        dec = GraphDecoder(model, max_cache_len=32 + len(reference) + 1, **kw)
        out, seen = dec.prefill(ids), []
        for i in range(len(reference)):
            seen.append(out.logits.float().clone())
            if i < len(reference) - 1:
                out = dec.step(torch.tensor([reference[i]], device=ids.device))
        dec.close()
        return seen

    with torch.inference_mode():
        eager = logits(use_graph=False, kernels=False)
        fast = logits()
    for la, lb in zip(fast, eager):
        errs.append(float((la - lb).norm() / lb.norm()))
        if int(la.argmax()) == int(lb.argmax()):
            hits += 1
        else:
            top = lb.topk(2).values
            gaps.append(float((top[0] - top[1]) / lb.std()))
    errs.sort()
    return {
        "agree": f"{hits}/{len(reference)}",
        "logits_rel_err_median": errs[len(errs) // 2],
        "logits_rel_err_max": errs[-1],
        "disagreement_gaps_over_std": sorted(gaps),
    }


def segment_labels(model, parts: int = 2) -> dict:
    """Decoder layers in ``parts`` runs plus the LM head: segments on the model's one GPU (hand-off path)."""
    from backend.arch.spec import decoder_layers

    layers = set(decoder_layers(model))
    names = [n for n, m in model.named_modules() if m in layers]
    labels = {n: f"part{i * parts // len(names)}" for i, n in enumerate(names)}
    labels["lm_head"] = "head"
    return labels


def run_model(
    key: str,
    depths,
    tokens: int,
    bw: float,
    skip_hf: bool,
    compile_models=(),
    profile: bool = False,
    segmented: bool = False,
) -> list[dict]:
    rows = []
    for layers in depths or (None,):
        d = truncated(key, layers)
        count = architecture.count_params(d)
        name = f"{key}" + (f" [{layers}/{catalog.raw_config(key)['num_hidden_layers']} layers]" if layers else "")
        log(f"== {name}: {count.total / 1e9:.2f} B params, {count.active / 1e9:.2f} B active")
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        request, model = build(d)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t
        w_measured = torch.cuda.memory_allocated() - base
        w_pred = memory.weight_bytes(d, "bf16")
        with torch.inference_mode():  # allocate cuBLAS workspaces once, outside the KV measurement
            model(input_ids=prompt(model)[:, :4])
        row = {
            "model": name,
            "key": key,
            "layers": layers or count_layers(d),
            "variant": bool(layers),
            "params": count.total,
            "active": count.active,
            "build_s": build_s,
            "weights_predicted": w_pred,
            "weights_measured": int(w_measured),
            "weights_error_pct": 100 * (w_measured - w_pred) / w_pred,
            "floor_tok_s": bw / (2 * count.active),
        }
        row["kv"] = [measure_kv(model, d, c) for c in CONTEXTS]
        fast_speed(model, 16)  # warm-up: kernels, allocator, capture path
        fast = fast_speed(model, tokens)
        row.update(
            {
                "fast_tok_s": fast["tok_s"],
                "fast_ttft_s": fast["ttft_s"],
                "graph": fast["graph"],
                "graph_error": fast["graph_error"],
                "routing_records": fast["routing_records"],
                "kernels": fast["kernels"],
                "kernel_setup_s": fast["setup_s"],
            }
        )
        plain = fast_speed(model, tokens, kernels=False)  # the graph with transformers' own modules only
        row["fast_no_kernels_tok_s"] = plain["tok_s"]
        nor = fast_speed(model, tokens, routing=False)
        row["fast_no_routing_tok_s"] = nor["tok_s"]
        window = getattr(model.config, "sliding_window", None) or getattr(model.config, "attention_chunk_size", None)
        n_eager = tokens if window else 24  # past the window where there is one
        # the reference: the same static-cache step run eagerly through transformers' modules (no graph, no kernels)
        eager = fast_speed(model, n_eager, use_graph=False, kernels=False)
        row["eager_static_tok_s"] = eager["tok_s"]
        row["graph_matches_eager"] = fast["tokens"][:n_eager] == eager["tokens"]
        row["graph_agree"] = f"{sum(a == b for a, b in zip(fast['tokens'], eager['tokens']))}/{n_eager}"
        row["no_kernels_agree"] = f"{sum(a == b for a, b in zip(plain['tokens'], eager['tokens']))}/{n_eager}"
        forced = forced_agreement(model, eager["tokens"])
        row["forced_agree"], row["forced"] = forced["agree"], forced
        if profile:
            row["kernel_launches"] = {"fused": launches(model, True), "transformers": launches(model, False)}
        if segmented:  # the sharded fast path's machinery on one GPU: 3 graphs, hand-offs between them
            seg = fast_speed(model, tokens, segments=segment_labels(model))
            row["segmented"] = {
                "tok_s": seg["tok_s"],
                "graphs": seg["graphs"],
                "graph_error": seg["graph_error"],
                "vs_one_graph": seg["tok_s"] / fast["tok_s"],
                "tokens_equal": seg["tokens"] == fast["tokens"],
                "agree": f"{sum(a == b for a, b in zip(seg['tokens'], fast['tokens']))}/{tokens}",
            }
        if compile_models and key in compile_models:
            comp = fast_speed(model, tokens, compile=True)
            row.update(
                {
                    "compiled_tok_s": comp["tok_s"],
                    "compile_warm_s": comp["warm_s"],
                    "compiled_graph_error": comp["graph_error"],
                    "compiled_matches": comp["tokens"][:n_eager] == eager["tokens"],
                }
            )
        if layers:  # the Playground's in-model estimate: step at k vs a (k-1)-layer view sharing the weights
            est = depth.estimate(model, count_layers(catalog.raw_config(key)))
            row["in_model_estimate"] = {
                "per_layer_ms": est.per_layer_s * 1e3,
                "full_tok_s": est.full_tok_s,
                "step_ms": est.step_s * 1e3,
                "shallower_step_ms": est.shallower_step_s * 1e3,
            }
        row["hf_tok_s"] = None if skip_hf else hf_generate_speed(model, min(tokens, 32))
        app = _stream_speed(request, tokens)  # the Playground's path: worker thread, detokenizing, events
        row.update(
            app_stream_tok_s=app["tok_s"],
            app_fast_path=app["fast_path"],
            app_serial_tok_s=app["serial_tok_s"],
            app_serial_tokens_equal=app["serial_tokens_equal"],
        )
        row["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        log(json.dumps({k: v for k, v in row.items() if k != "kv"}, default=str))
        for kv in row["kv"]:
            log(
                f"   kv @ {kv['context']}: predicted {kv['predicted_bytes'] / GiB:.3f} GiB, "
                f"measured {kv['measured_bytes'] / GiB:.3f} GiB ({kv['error_pct']:+.2f} %)"
            )
        rows.append(row)
        del model
        from backend.live import runtime

        runtime.release(request)
    return rows


def count_layers(d: dict) -> int:
    return int(d.get("num_hidden_layers") or d.get("n_layer"))


def extrapolate(rows: list[dict], key: str) -> dict | None:
    """Full-depth tok/s from two separately built depths (per-layer cost = slope), beside the Playground's
    in-model estimate (one loaded model, timed at k and at a (k-1)-layer view of it) from each depth."""
    r = sorted((x for x in rows if x["key"] == key and x["variant"]), key=lambda x: x["layers"])
    if len(r) < 2:
        return None
    whole = next((x for x in rows if x["key"] == key and not x["variant"]), None)
    a, b = r[0], r[-1]
    full = count_layers(catalog.raw_config(key))
    full_count = architecture.count_params(key)
    est = depth.DepthEstimate(b["layers"], full, 1 / b["fast_tok_s"], 1 / a["fast_tok_s"], True, a["layers"])
    return {
        "model": key,
        "per_layer_ms": est.per_layer_s * 1e3,
        "full_layers": full,
        "extrapolated_tok_s": est.full_tok_s,
        "in_model_estimates": {x["layers"]: x.get("in_model_estimate") for x in r},
        "measured_full_tok_s": whole["fast_tok_s"] if whole else None,
        "full_params": full_count.total,
        "full_active": full_count.active,
        "note": f"measured at {a['layers']} and {b['layers']} layers, full width; layers past the first "
        f"{a['layers']} assumed to cost what the measured extra layers cost",
    }


def table(rows: list[dict], extra: list[dict]) -> str:
    head = (
        f"{'model':34s} {'params':>8s} {'active':>8s} {'floor':>7s} {'HF gen':>7s} {'no-krn':>7s} {'ours':>7s} "
        f"{'%floor':>6s} {'no-rt':>7s} {'app':>7s} {'=eager':>7s} {'w pred':>8s} {'w meas':>8s} {'kv err %':>16s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        kv = "/".join(f"{k['error_pct']:+.1f}" for k in r["kv"])
        hf = f"{r['hf_tok_s']:.1f}" if r["hf_tok_s"] else "—"
        lines.append(
            f"{r['model']:34s} {r['params'] / 1e9:7.2f}B {r['active'] / 1e9:7.2f}B {r['floor_tok_s']:7.0f} "
            f"{hf:>7s} {r['fast_no_kernels_tok_s']:7.1f} {r['fast_tok_s']:7.1f} "
            f"{100 * r['fast_tok_s'] / r['floor_tok_s']:5.0f}% "
            f"{r['fast_no_routing_tok_s']:7.1f} {r['app_stream_tok_s']:7.1f} {r['forced_agree']:>7s} "
            f"{r['weights_predicted'] / GiB:7.2f}G {r['weights_measured'] / GiB:7.2f}G {kv:>16s}"
            + (f"  compiled {r['compiled_tok_s']:.1f}" if r.get("compiled_tok_s") else "")
            + (
                f"  segmented {r['segmented']['tok_s']:.1f} ({r['segmented']['graphs']} graphs, tokens "
                f"{r['segmented']['agree']})"
                if r.get("segmented")
                else ""
            )
            + (
                f"  launches/step {r['kernel_launches']['transformers']['launches']} -> "
                f"{r['kernel_launches']['fused']['launches']}"
                if r.get("kernel_launches")
                else ""
            )
        )
    for e in extra:
        one = ", ".join(
            f"{v['full_tok_s']:.1f} tok/s ({v['per_layer_ms']:.3f} ms/layer) at {k} layers"
            for k, v in e["in_model_estimates"].items()
            if v
        )
        lines.append(
            f"{e['model']} extrapolated to {e['full_layers']} layers: {e['extrapolated_tok_s']:.1f} tok/s "
            f"({e['per_layer_ms']:.3f} ms per added layer); in-model estimates: {one}"
            + (f"; measured at full depth: {e['measured_full_tok_s']:.1f} tok/s" if e["measured_full_tok_s"] else "")
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small shapes: check the fast path works")
    ap.add_argument("--only", default="")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--no-shard", action="store_true", help="skip the sharding checks")
    ap.add_argument("--no-models", action="store_true", help="only the sharding checks")
    ap.add_argument(
        "--multi",
        action="store_true",
        help="run the several-GPU check on one GPU too (a smoke "
        "test of its code: the 'sharded' model then sits on that one GPU)",
    )
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument(
        "--depths",
        default="",
        help="also run fewer-layer variants, e.g. qwen3-30b-a3b=4,5 "
        "(with the full model in the plan too, the extrapolation is checked against it)",
    )
    ap.add_argument("--compile", default="", help="models to also run with torch.compile inside the graph")
    ap.add_argument("--profile", action="store_true", help="count the kernels of a decode step, fused vs not")
    ap.add_argument(
        "--segmented",
        action="store_true",
        help="also decode each model as 3 graphs with hand-offs on its one GPU (the sharded fast path's machinery)",
    )
    ap.add_argument(
        "--two-gpu",
        action="store_true",
        help="several GPUs: Llama 4 Scout whole over all GPUs, two "
        "models on two GPUs vs alone, and the one-vs-sharded check",
    )
    ap.add_argument(
        "--compile-cache",
        default="",
        help="a model whose torch.compile warm-up is timed in two fresh "
        "processes (empty cache, then the first one's cache)",
    )
    ap.add_argument("--compile-warmup", default="", help=argparse.SUPPRESS)  # one process of --compile-cache
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    import transformers

    if a.compile_warmup:
        log("COMPILE " + json.dumps(compile_warmup(a.compile_warmup)))
        return

    gpu = torch.cuda.get_device_name(0)
    bw = copy_bandwidth()
    log(
        f"{gpu} x{torch.cuda.device_count()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"copy bandwidth {bw / 1e12:.2f} TB/s"
    )
    plan = SMOKE if a.smoke else PLAN
    if a.only:
        plan = [p for p in plan if p[0] in a.only.split(",")]
    for item in filter(None, a.depths.split(";")):
        key, _, ks = item.partition("=")
        plan.append((key, tuple(int(k) for k in ks.split(","))))
    if a.no_models:
        plan = []
    rows = []
    for key, depths in plan:
        try:
            rows += run_model(
                key,
                depths,
                32 if a.smoke else a.tokens,
                bw,
                a.skip_hf,
                a.compile.split(",") if a.compile else (),
                a.profile,
                a.segmented,
            )
        except torch.cuda.OutOfMemoryError as e:
            log(f"!! {key}: out of memory: {str(e).splitlines()[0]}")
            gc.collect()
            torch.cuda.empty_cache()
    extra = [e for e in (extrapolate(rows, k) for k in dict.fromkeys(k for k, _ in plan)) if e]
    shard = None if a.no_shard else sharding_check()
    several = torch.cuda.device_count() >= 2
    multi = multi_gpu_check() if (several or a.multi) and not a.no_shard else None
    two = None
    if a.two_gpu and several:
        two = {
            "multi_gpu_moe": multi_gpu_check("qwen3-30b-a3b"),
            "scout": scout_whole(bw, a.tokens),
            "two_models": two_models(tokens=a.tokens),
        }
    elif a.two_gpu:
        log("!! --two-gpu needs at least 2 GPUs; skipped")
    cache = compile_cache_check(a.compile_cache) if a.compile_cache else None
    result = {
        "gpu": gpu,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "copy_bandwidth_Bps": bw,
        "rows": rows,
        "extrapolated": extra,
        "sharding": shard,
        "multi_gpu": multi,
        "two_gpu": two,
        "compile_cache": cache,
        "tokens": a.tokens,
        "smoke": a.smoke,
        "command": " ".join(sys.argv),
    }
    for r in rows:
        r.pop("tokens", None)
    tag = f"-{a.tag}" if a.tag else ""
    name = f"gpu-{'smoke-' if a.smoke else ''}{gpu.replace(' ', '_')}x{torch.cuda.device_count()}{tag}.json"
    for folder in filter(None, [a.out, str(ROOT / "bench" / "results")]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(result, indent=2, default=str))
    log("")
    if rows:
        log(table(rows, extra))
    for r in rows:
        if r.get("forced"):
            f = r["forced"]
            gaps = ", ".join(f"{g:.3f}" for g in f["disagreement_gaps_over_std"][:6])
            log(
                f"{r['model']}: fast vs eager fed the same tokens: {f['agree']} picks agree, logits rel. error median "
                f"{f['logits_rel_err_median']:.1e} (max {f['logits_rel_err_max']:.1e}); eager top-2 gaps / std where "
                f"they differ: {gaps or '-'}; free-running {r['graph_agree']}; kernels {r.get('kernels')}"
            )
        if r.get("kernel_launches"):
            f = r["kernel_launches"]["fused"]
            log(
                f"{r['model']}: one step's kernels, fused ({f['launches']}, {f['gpu_ms']:.2f} ms of GPU time): "
                + "; ".join(f"{t['kernel'][:40]} x{t['count']} {t['us']:.0f}us" for t in f["top"][:10])
            )
    if shard:
        log(
            f"split {shard['model']} over {shard['devices']} (each part runs where it sits): greedy tokens equal to "
            f"one GPU: {shard['tokens_equal']} ({shard['agree']}/{shard['n']}); parameters off their planned device: "
            f"{shard['misplaced']}; bytes by device {shard['bytes_by_device']}"
        )
    for mg in filter(None, [multi, (two or {}).get("multi_gpu_moe")]):
        o, m = mg["one_gpu"], mg["sharded"]
        log(
            f"{mg['model']} sharded over {mg['devices']}: greedy tokens equal: {mg['tokens_equal']} "
            f"({mg['agree']}/{mg['n']}), streamed tokens equal: {mg['stream_tokens_equal']}; misplaced "
            f"{m['misplaced']}; HF generate {o['hf_tok_s']:.1f} -> {m['hf_tok_s']:.1f} tok/s "
            f"({100 * mg['sharded_vs_one_hf_tok_s']:.0f} %); streaming {o['tok_s']:.1f} "
            f"({'fast path' if o['fast_path'] else 'plain'}) -> {m['tok_s']:.1f} "
            f"({'fast path' if m['fast_path'] else 'plain'}; {100 * mg['sharded_vs_one_tok_s']:.0f} %)"
        )
    if two:
        sc = two["scout"]
        log(
            f"{sc['model']} whole ({sc['params'] / 1e9:.1f} B, {sc['active'] / 1e9:.2f} B active) over "
            f"{len(sc['weights_measured_by_device'])} GPUs: app {sc['app_tok_s']:.1f} tok/s "
            f"({'fast path, %d graphs' % sc['graphs'] if sc['fast_path'] else 'plain path'}), floor "
            f"{sc['floor_tok_s']:.0f} ({sc['pct_floor']:.0f} %); routing steps {sc['routing_steps']}"
        )
        for dev, b in sorted(sc["weights_measured_by_device"].items()):
            plan = sc["planned_bytes_by_device"].get(dev, 0)
            log(
                f"   {dev}: weights planned {plan / GiB:.2f} GiB, allocated {b / GiB:.2f} GiB "
                f"({100 * (b - plan) / plan if plan else 0:+.2f} %)"
            )
        tm = two["two_models"]
        for k in tm["models"]:
            log(
                f"{k}: alone {tm['solo'][k]['tok_s']:.1f} tok/s on {tm['solo'][k]['device']}, beside the other "
                f"{tm['together'][k]['tok_s']:.1f} ({100 * tm['together_vs_solo'][k]:.0f} %)"
            )
    if cache:
        log(
            f"torch.compile warm-up of {cache['model']}: {cache['cold'].get('warm_s', float('nan')):.1f} s in a "
            f"fresh process with an empty cache, {cache['warm'].get('warm_s', float('nan')):.1f} s in the next "
            f"({cache['warm'].get('tok_s', float('nan')):.1f} tok/s)"
        )


if __name__ == "__main__":
    main()
