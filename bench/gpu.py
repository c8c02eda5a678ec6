"""GPU benchmark, one device call: speed against the bandwidth floor, memory predicted vs measured.

    python bench/gpu.py [--smoke] [--only llama3-8b,qwen3-30b-a3b] [--tokens 128] [--no-models] [--out DIR]

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

GiB = 1024 ** 3

# key, depths (None = full depth), contexts for the KV check
PLAN = [
    ("llama3-8b", None),          # dense GQA: the dense target
    ("olmo2-7b", None),           # MHA
    ("qwen3-30b-a3b", None),      # MoE, GQA: the MoE target
    ("gpt-oss-20b", None),        # MoE + sliding-window layers
    ("deepseek-v3", (4, 5)),      # MLA + MoE, full width: 3 dense + 1 or 2 MoE layers
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
        s.record(); b.copy_(a); e.record(); torch.cuda.synchronize()
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
    gc.collect(); torch.cuda.empty_cache()
    return {"context": context, "predicted_bytes": predicted, "measured_bytes": int(measured),
            "error_pct": 100 * (measured - predicted) / predicted}


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


def fast_speed(model, n: int, use_graph: bool = True, routing: bool = True, compile: bool = False) -> dict:
    """Our streaming loop: one host copy per token (token + every layer's routing).

    tok/s is the steady decode rate after WARM steps; TTFT and the first steps are reported apart.
    """
    ids = prompt(model)
    with torch.inference_mode():
        t_init = time.perf_counter()
        dec = GraphDecoder(model, max_cache_len=32 + n + 1, capture_routing=routing, use_graph=use_graph,
                           compile=compile)
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
        dec.close()
    return {"tok_s": (n - 1 - WARM) / (end - t_steady), "ttft_s": ttft, "warm_s": t_steady - t1,
            "setup_s": t0 - t_init, "graph": graphed, "graph_error": graph_error,
            "compiled": dec.compiled, "routing_records": routed, "tokens": tokens}


def eager_tokens(model, n: int) -> list[int]:
    ids = torch.manual_seed(0) and torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.inference_mode():
        out = model.generate(ids.to(model.get_input_embeddings().weight.device), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
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
    dmap = infer_auto_device_map(model, max_memory={0: int(weights * 0.55), "cpu": 64 * GiB},
                                 no_split_module_classes=[arch_spec(key).decoder_layer_class])
    model.load_state_dict(state)
    # main_device="cpu": CPU layers run on the CPU (the default would offload them, running all on the GPU)
    model = dispatch_model(model, device_map=dmap, main_device="cpu")
    split = eager_tokens(model, n)
    dmap = {k: (f"cuda:{v}" if isinstance(v, int) else v) for k, v in dmap.items()}
    check = placement_check(model, dmap)
    del model
    gc.collect(); torch.cuda.empty_cache()
    return {"model": key, "kind": "gpu+cpu", "devices": sorted(set(dmap.values())),
            "bytes_by_device": check["actual_bytes"], "planned_bytes_by_device": check["planned_bytes"],
            "misplaced": check["misplaced_count"], "tokens_equal": ref == split,
            "agree": sum(a == b for a, b in zip(ref, split)), "n": n}


def _stream_speed(request, tokens: int) -> dict:
    """Our streaming path (GenerationRun, routing on) on a loaded request: steady tok/s and path."""
    from backend.live.generation import GenerationRun, GenerationSettings

    speeds = []
    for _ in range(2):  # the first run warms up (and captures the graph on one GPU)
        run = GenerationRun([request], "The history of", GenerationSettings(max_new_tokens=tokens, ignore_eos=True))
        run.start().join(300)
        speeds.append(run.stats(0))
    s = speeds[-1]
    return {"tok_s": s["tokens_per_s"], "fast_path": s["fast_path"], "device": s["device"], "status": s["status"]}


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
    res["sharded"] = {"hf_tok_s": hf_generate_speed(lm.model, 32), **_stream_speed(many, tokens),
                      "bytes_by_device": check["actual_bytes"], "planned_bytes_by_device": check["planned_bytes"],
                      "misplaced": check["misplaced_count"]}
    split = eager_tokens(lm.model, 24)
    res.update(tokens_equal=ref == split, agree=sum(a == b for a, b in zip(ref, split)), n=24,
               devices=sorted(check["actual_bytes"]))
    for k in ("hf_tok_s", "tok_s"):
        res[f"sharded_vs_one_{k}"] = res["sharded"][k] / res["one_gpu"][k]
    runtime.release(many)
    return res


def run_model(key: str, depths, tokens: int, bw: float, skip_hf: bool, compile_models=()) -> list[dict]:
    rows = []
    for layers in (depths or (None,)):
        d = truncated(key, layers)
        count = architecture.count_params(d)
        name = f"{key}" + (f" [{layers}/{catalog.raw_config(key)['num_hidden_layers']} layers]" if layers else "")
        log(f"== {name}: {count.total / 1e9:.2f} B params, {count.active / 1e9:.2f} B active")
        gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        request, model = build(d)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t
        w_measured = torch.cuda.memory_allocated() - base
        w_pred = memory.weight_bytes(d, "bf16")
        with torch.inference_mode():  # allocate cuBLAS workspaces once, outside the KV measurement
            model(input_ids=prompt(model)[:, :4])
        row = {"model": name, "key": key, "layers": layers or count_layers(d), "variant": bool(layers),
               "params": count.total,
               "active": count.active, "build_s": build_s,
               "weights_predicted": w_pred, "weights_measured": int(w_measured),
               "weights_error_pct": 100 * (w_measured - w_pred) / w_pred,
               "floor_tok_s": bw / (2 * count.active)}
        row["kv"] = [measure_kv(model, d, c) for c in CONTEXTS]
        fast_speed(model, 16)  # warm-up: kernels, allocator, capture path
        fast = fast_speed(model, tokens)
        row.update({"fast_tok_s": fast["tok_s"], "fast_ttft_s": fast["ttft_s"], "graph": fast["graph"],
                    "graph_error": fast["graph_error"], "routing_records": fast["routing_records"]})
        nor = fast_speed(model, tokens, routing=False)
        row["fast_no_routing_tok_s"] = nor["tok_s"]
        window = getattr(model.config, "sliding_window", None) or getattr(model.config, "attention_chunk_size", None)
        n_eager = tokens if window else 24  # past the window where there is one
        eager = fast_speed(model, n_eager, use_graph=False)
        row["eager_static_tok_s"] = eager["tok_s"]
        row["graph_matches_eager"] = fast["tokens"][:n_eager] == eager["tokens"]
        row["graph_agree"] = f"{sum(a == b for a, b in zip(fast['tokens'], eager['tokens']))}/{n_eager}"
        if compile_models and key in compile_models:
            comp = fast_speed(model, tokens, compile=True)
            row.update({"compiled_tok_s": comp["tok_s"], "compile_warm_s": comp["warm_s"],
                        "compiled_graph_error": comp["graph_error"],
                        "compiled_matches": comp["tokens"][:n_eager] == eager["tokens"]})
        if layers:  # the Playground's in-model estimate: step at k vs a (k-1)-layer view sharing the weights
            est = depth.estimate(model, count_layers(catalog.raw_config(key)))
            row["in_model_estimate"] = {"per_layer_ms": est.per_layer_s * 1e3, "full_tok_s": est.full_tok_s,
                                        "step_ms": est.step_s * 1e3, "shallower_step_ms": est.shallower_step_s * 1e3}
        row["hf_tok_s"] = None if skip_hf else hf_generate_speed(model, min(tokens, 32))
        app = _stream_speed(request, tokens)  # the Playground's path: worker thread, detokenizing, events
        row.update(app_stream_tok_s=app["tok_s"], app_fast_path=app["fast_path"])
        row["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        log(json.dumps({k: v for k, v in row.items() if k != "kv"}, default=str))
        for kv in row["kv"]:
            log(f"   kv @ {kv['context']}: predicted {kv['predicted_bytes'] / GiB:.3f} GiB, "
                f"measured {kv['measured_bytes'] / GiB:.3f} GiB ({kv['error_pct']:+.2f} %)")
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
    return {"model": key, "per_layer_ms": est.per_layer_s * 1e3, "full_layers": full,
            "extrapolated_tok_s": est.full_tok_s,
            "in_model_estimates": {x["layers"]: x.get("in_model_estimate") for x in r},
            "measured_full_tok_s": whole["fast_tok_s"] if whole else None,
            "full_params": full_count.total, "full_active": full_count.active,
            "note": f"measured at {a['layers']} and {b['layers']} layers, full width; layers past the first "
                    f"{a['layers']} assumed to cost what the measured extra layers cost"}


def table(rows: list[dict], extra: list[dict]) -> str:
    head = (f"{'model':34s} {'params':>8s} {'active':>8s} {'floor':>7s} {'HF gen':>7s} {'ours':>7s} "
            f"{'%floor':>6s} {'no-rt':>7s} {'app':>7s} {'w pred':>8s} {'w meas':>8s} {'kv err %':>16s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kv = "/".join(f"{k['error_pct']:+.1f}" for k in r["kv"])
        hf = f"{r['hf_tok_s']:.1f}" if r["hf_tok_s"] else "—"
        lines.append(f"{r['model']:34s} {r['params'] / 1e9:7.2f}B {r['active'] / 1e9:7.2f}B {r['floor_tok_s']:7.0f} "
                     f"{hf:>7s} {r['fast_tok_s']:7.1f} {100 * r['fast_tok_s'] / r['floor_tok_s']:5.0f}% "
                     f"{r['fast_no_routing_tok_s']:7.1f} {r['app_stream_tok_s']:7.1f} {r['weights_predicted'] / GiB:7.2f}G "
                     f"{r['weights_measured'] / GiB:7.2f}G {kv:>16s}"
                     + (f"  compiled {r['compiled_tok_s']:.1f}" if r.get("compiled_tok_s") else ""))
    for e in extra:
        one = ", ".join(f"{v['full_tok_s']:.1f} tok/s ({v['per_layer_ms']:.3f} ms/layer) at {k} layers"
                        for k, v in e["in_model_estimates"].items() if v)
        lines.append(f"{e['model']} extrapolated to {e['full_layers']} layers: {e['extrapolated_tok_s']:.1f} tok/s "
                     f"({e['per_layer_ms']:.3f} ms per added layer); in-model estimates: {one}"
                     + (f"; measured at full depth: {e['measured_full_tok_s']:.1f} tok/s"
                        if e["measured_full_tok_s"] else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small shapes: check the fast path works")
    ap.add_argument("--only", default="")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--no-shard", action="store_true", help="skip the sharding checks")
    ap.add_argument("--no-models", action="store_true", help="only the sharding checks")
    ap.add_argument("--multi", action="store_true", help="run the several-GPU check on one GPU too (a smoke "
                    "test of its code: the 'sharded' model then sits on that one GPU)")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--depths", default="", help="also run fewer-layer variants, e.g. qwen3-30b-a3b=4,5 "
                    "(with the full model in the plan too, the extrapolation is checked against it)")
    ap.add_argument("--compile", default="", help="models to also run with torch.compile inside the graph")
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    import transformers

    gpu = torch.cuda.get_device_name(0)
    bw = copy_bandwidth()
    log(f"{gpu} x{torch.cuda.device_count()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"copy bandwidth {bw / 1e12:.2f} TB/s")
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
            rows += run_model(key, depths, 32 if a.smoke else a.tokens, bw, a.skip_hf,
                              a.compile.split(",") if a.compile else ())
        except torch.cuda.OutOfMemoryError as e:
            log(f"!! {key}: out of memory: {str(e).splitlines()[0]}")
            gc.collect(); torch.cuda.empty_cache()
    extra = [e for e in (extrapolate(rows, k) for k in dict.fromkeys(k for k, _ in plan)) if e]
    shard = None if a.no_shard else sharding_check()
    multi = multi_gpu_check() if (torch.cuda.device_count() >= 2 or a.multi) and not a.no_shard else None
    result = {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "transformers": transformers.__version__, "copy_bandwidth_Bps": bw, "rows": rows,
              "extrapolated": extra, "sharding": shard, "multi_gpu": multi, "tokens": a.tokens, "smoke": a.smoke,
              "command": " ".join(sys.argv)}
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
    if shard:
        log(f"split {shard['model']} over {shard['devices']} (each part runs where it sits): greedy tokens equal to "
            f"one GPU: {shard['tokens_equal']} ({shard['agree']}/{shard['n']}); parameters off their planned device: "
            f"{shard['misplaced']}; bytes by device {shard['bytes_by_device']}")
    if multi:
        o, m = multi["one_gpu"], multi["sharded"]
        log(f"{multi['model']} sharded over {multi['devices']}: greedy tokens equal: {multi['tokens_equal']} "
            f"({multi['agree']}/{multi['n']}); misplaced {m['misplaced']}; HF generate {o['hf_tok_s']:.1f} -> "
            f"{m['hf_tok_s']:.1f} tok/s ({100 * multi['sharded_vs_one_hf_tok_s']:.0f} %); streaming "
            f"{o['tok_s']:.1f} ({'fast path' if o['fast_path'] else 'plain'}) -> {m['tok_s']:.1f} "
            f"({'fast path' if m['fast_path'] else 'plain'}; {100 * multi['sharded_vs_one_tok_s']:.0f} %)")


if __name__ == "__main__":
    main()
