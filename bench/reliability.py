"""Reliability figures (issue 6): bad inputs tried by kind and crashes, concurrent sessions, cancel latency,
memory returned after a simulated OOM. Prints them and writes bench/results/reliability.json.

    .venv/bin/python -m bench.reliability [--examples 1000] [--tokens 16]

Uses the helpers of tests/test_reliability.py, so the bench measures what the tests check.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from backend.arch import configs
from backend.arch.errors import ArchLabError
from backend.live.generation import GenerationRun, GenerationSettings
from backend.live.runtime import ModelRequest, load, release
from tests import test_reliability as T

RESULTS = Path(__file__).resolve().parent / "results"


def _outcome(fn) -> str:
    try:
        fn()
        return "accepted"
    except ArchLabError:
        return "refused"
    except Exception:  # noqa: BLE001 - that is what we count
        return "crash"


def config_mutations(examples: int) -> dict:
    kinds, outcomes, crashes = collections.Counter(), collections.Counter(), []

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(T.mutated_config())
    def run(case):
        d, ks = case
        kinds.update(ks)
        try:
            outcomes[T.check_backend(d)] += 1
        except Exception as e:  # noqa: BLE001
            outcomes["crash"] += 1
            crashes.append(f"{type(e).__name__}: {str(e)[:200]}")

    run()
    return {"configs": sum(outcomes.values()), "mutations_by_kind": dict(kinds), "outcomes": dict(outcomes),
            "crash_examples": crashes[:5]}


def direct_inputs() -> dict:
    tried = collections.defaultdict(collections.Counter)
    for bad in T.BAD_SETTINGS:
        tried["generation settings"][_outcome(lambda: GenerationRun([T.QWEN], "hi", GenerationSettings(**bad)))] += 1
    for p in ["", " \n", None, 5, "x" * 200_001]:
        tried["prompts"][_outcome(lambda: GenerationRun([T.QWEN], p, GenerationSettings()))] += 1
    for text in ["{", "[1]", b"\xff{}", "[" * 100_000 + "]" * 100_000, " " * (configs.MAX_CONFIG_BYTES + 1),
                 '{"model_type": {"a": 1}}', '{"model_type": "evil"}', '{"model_type": "gpt2", "auto_map": {"x": 1}}']:
        tried["uploaded config.json"][_outcome(lambda: T.arch_spec(configs.parse_config_text(text)))] += 1
    for field, value in [("num_experts", 10 ** 9), ("num_hidden_layers", 10 ** 9), ("hidden_size", 10 ** 9),
                         ("vocab_size", 10 ** 12), ("num_experts_per_tok", 10 ** 9), ("kv_lora_rank", 10 ** 9)]:
        d = dict(T.catalog.raw_config("qwen3-30b-a3b"), **{field: value})
        tried["absurd sizes"][_outcome(lambda: T.arch_spec(d))] += 1
    tried["checkpoint folders"] = checkpoints()
    return {k: dict(v) for k, v in tried.items()}


def checkpoints() -> collections.Counter:
    out = collections.Counter()
    lm = load(T.QWEN)
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good"
        lm.model.save_pretrained(good)
        lm.tokenizer.save_pretrained(good)
        cases = [((), {}, {}), (("tokenizer.json", "tokenizer_config.json"), {}, {}), (("model.safetensors",), {}, {}),
                 (("model.safetensors",), {}, {"pytorch_model.bin": b"\x80\x04junk"}),
                 ((), {"intermediate_size": 480}, {}), ((), {"num_hidden_layers": 4, "layer_types": None}, {}),
                 ((), {"auto_map": {"AutoModelForCausalLM": "evil.M"}}, {}), ((), {"model_type": "evil"}, {}),
                 (("model.safetensors",), {}, {"model.safetensors": b"\xff" * 64})]
        for i, (skip, edit, extra) in enumerate(cases):
            folder = Path(tmp) / f"c{i}"
            folder.mkdir()
            T._copy(good, folder, skip)
            for name, data in extra.items():
                (folder / name).write_bytes(data)
            if edit:
                T._edit_config(folder, **edit)
            out[_outcome(lambda: T._load_pretrained(folder))] += 1
            release(ModelRequest("upload", mode="pretrained", path=str(folder), device="cpu"))
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cancel_figures(repeats: int) -> dict:
    rows = [T.cancel_latency(ModelRequest("deepseek-v3", size="small")) for _ in range(repeats)]
    lat = [r["cancel_s"] for r in rows]
    step = statistics.median(r["step_s"] for r in rows)
    return {"model": "deepseek-v3 miniature (small), CPU", "repeats": repeats, "median_s": statistics.median(lat),
            "max_s": max(lat), "median_step_s": step, "max_in_steps": max(lat) / step,
            "workers_ended": not any(r["worker_alive"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    fig = {"host": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}}
    fig["config_mutations"] = config_mutations(a.examples)
    fig["direct_inputs"] = direct_inputs()
    crashes = fig["config_mutations"]["outcomes"].get("crash", 0) + sum(
        c.get("crash", 0) for c in fig["direct_inputs"].values())
    fig["inputs_tried"] = fig["config_mutations"]["configs"] + sum(sum(c.values()) for c in fig["direct_inputs"].values())
    fig["crashes"] = crashes
    c = T.concurrent_sessions([T.QWEN, T.MOE], T.PROMPTS, a.tokens)
    fig["concurrency"] = dict(c, tokens_per_run=a.tokens)
    fig["cancel"] = cancel_figures(a.repeats)
    with pytest.MonkeyPatch().context() as mp:
        oom = T.simulate_oom(mp, ModelRequest("gpt2", mode="full", device="cpu"), T.MOE)
    fig["oom"] = {"model": "gpt2 full size, random fp32, CPU (OutOfMemoryError raised in its forward)",
                  "weights_bytes": oom["weights_bytes"], "rss_returned_bytes": oom["rss_returned_bytes"],
                  "released": oom["released"], "model_freed": oom["freed"],
                  "other_model_finished": oom["run"].stats(1)["status"] == "finished"}
    fig["seconds"] = time.perf_counter() - t0

    cm = fig["config_mutations"]
    print(f"inputs tried: {fig['inputs_tried']:,}   crashes: {fig['crashes']}")
    print(f"  mutated configs: {cm['configs']} ({cm['outcomes']}); mutations by kind: {cm['mutations_by_kind']}")
    for kind, counts in fig["direct_inputs"].items():
        print(f"  {kind}: {sum(counts.values())} {counts}")
    print(f"concurrent sessions: {c['sessions']} x {c['models']} models x {a.tokens} tokens in {c['seconds']:.2f} s; "
          f"token mismatches vs solo runs: {c['mismatches']}; builds per model: {c['builds']}")
    k = fig["cancel"]
    print(f"cancel -> Finished(cancelled): median {k['median_s'] * 1e3:.1f} ms, max {k['max_s'] * 1e3:.1f} ms "
          f"(median step {k['median_step_s'] * 1e3:.1f} ms; max = {k['max_in_steps']:.2f} steps)")
    o = fig["oom"]
    print(f"simulated OOM: model released {o['released']}, freed {o['model_freed']}; weights "
          f"{o['weights_bytes'] / 2**20:,.0f} MiB, RSS returned {o['rss_returned_bytes'] / 2**20:,.0f} MiB; "
          f"other model finished {o['other_model_finished']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(fig, indent=2, default=str))
    print(f"wrote {RESULTS / 'reliability.json'} ({fig['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
