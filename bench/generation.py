"""Generation benchmark: per architecture build time, TTFT, tok/s with and without routing capture;
then 4 miniatures streaming side by side vs solo. Writes JSON + CSV to bench/results/generation-cpu<cores>.*.

    .venv/bin/python -m bench.generation [--size small] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from backend.arch import catalog
from backend.live.generation import Failed, GenerationRun, GenerationSettings
from backend.live.runtime import ModelRequest, hardware, load, release

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Mixture-of-experts layers route each token to a few experts, so that"
SIDE = ("qwen3-4b", "deepseek-v3", "gemma3-27b", "gpt-oss-20b")


def _run(reqs, tokens, capture=True):
    run = GenerationRun(
        reqs, PROMPT, GenerationSettings(max_new_tokens=tokens, capture_routing=capture, ignore_eos=True)
    ).start()
    run.join()
    events = run.poll(0)
    fails = [e for e in events if isinstance(e, Failed)]
    if fails:
        raise RuntimeError(fails[0].message)
    return [run.stats(i) for i in range(len(reqs))]


def per_architecture(size: str, tokens: int, repeats: int) -> list[dict]:
    rows = []
    for key in catalog.keys():
        req = ModelRequest(key, size=size)
        release(req)
        t = time.perf_counter()
        lm = load(req)
        build = time.perf_counter() - t
        _run([req], 8)  # warm-up
        moe = lm.spec.moe is not None
        cap, plain, ttft = [], [], []
        for _ in range(repeats):  # alternate so drift hits both alike
            s = _run([req], tokens, capture=True)[0]
            cap.append(s["tokens_per_s"])
            ttft.append(s["ttft_s"])
            if moe:
                plain.append(_run([req], tokens, capture=False)[0]["tokens_per_s"])
        row = {
            "model": key,
            "pattern": lm.spec.layer_pattern,
            "params": lm.params,
            "build_s": build,
            "ttft_ms": 1000 * statistics.median(ttft),
            "tok_s": statistics.median(cap),
            "tok_s_no_capture": statistics.median(plain) if moe else None,
        }
        row["capture_cost_pct"] = 100 * (1 - row["tok_s"] / row["tok_s_no_capture"]) if moe else None
        rows.append(row)
        print(
            f"{key:20s} {row['pattern']:14.14s} build {build * 1000:6.0f} ms  ttft {row['ttft_ms']:6.1f} ms  "
            f"{row['tok_s']:6.0f} tok/s"
            + (f"  (no capture {row['tok_s_no_capture']:6.0f}, cost {row['capture_cost_pct']:+.1f} %)" if moe else ""),
            flush=True,
        )
        release(req)
    return rows


def side_by_side(size: str, tokens: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    reqs = [ModelRequest(k, size=size) for k in SIDE]
    for r in reqs:
        load(r)
        _run([r], 8)
    solo = {r.source: statistics.median(_run([r], tokens)[0]["tokens_per_s"] for _ in range(repeats)) for r in reqs}
    together = {k: [] for k in SIDE}
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        stats = _run(reqs, tokens)
        walls.append(time.perf_counter() - t)
        for k, s in zip(SIDE, stats):
            together[k].append(s["tokens_per_s"])
    together = {k: statistics.median(v) for k, v in together.items()}
    ratio = {k: together[k] / solo[k] for k in SIDE}
    seq_time = sum(tokens / solo[k] for k in SIDE)
    out = {
        "threads": threads,
        "solo_tok_s": solo,
        "side_by_side_tok_s": together,
        "per_model_ratio": ratio,
        "aggregate_tok_s": sum(together.values()),
        "mean_solo_tok_s": statistics.mean(solo.values()),
        "aggregate_over_mean_solo": sum(together.values()) / statistics.mean(solo.values()),
        "wall_s": statistics.median(walls),
        "sequential_solo_s": seq_time,
        "throughput_vs_sequential": seq_time / statistics.median(walls),
    }
    print(f"\nside by side, torch threads = {threads}")
    for k in SIDE:
        print(f"  {k:14s} solo {solo[k]:6.0f} tok/s  x4 {together[k]:6.0f} tok/s  ({100 * ratio[k]:.0f} % of solo)")
    print(
        f"  aggregate of 4: {out['aggregate_tok_s']:.0f} tok/s = {100 * out['aggregate_over_mean_solo']:.0f} % of the "
        f"mean solo speed; wall {out['wall_s']:.2f} s vs {seq_time:.2f} s one after another "
        f"({100 * out['throughput_vs_sequential']:.0f} %)"
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="torch threads for the side-by-side runs")
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    rows = per_architecture(args.size, args.tokens, args.repeats)
    sbs = [side_by_side(args.size, args.tokens, args.repeats, t) for t in args.threads]
    torch.set_num_threads(default_threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.machine(),
        "hardware": hardware(),
        "torch": torch.__version__,
        "torch_threads": default_threads,
        "size": args.size,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "prompt": PROMPT,
    }
    out = RESULTS / f"generation-cpu{os.cpu_count()}"
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "per_architecture": rows, "side_by_side": sbs}, indent=1, default=float)
    )
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {out}.json and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
