"""Reliability figures (issues 6 and 15): bad inputs tried by kind and crashes, concurrent sessions, cancel
latency, memory returned after a simulated OOM; paths outside the allowed model folders, run ids, per-visitor
quotas with 8 sessions, runs re-attached by id. Prints them and writes bench/results/reliability-cpu<cores>.json.

    .venv/bin/python -m bench.reliability [--examples 20000] [--seed N] [--tokens 16]
    .venv/bin/python -m bench.reliability --only configs [--examples 20000]   # the config fuzz alone

The config fuzz draws random mutated catalog configs (hypothesis, not derandomized; the seed is in the results)
and holds each to: the formula count from the ArchSpec equals the meta model's, or a one-line refusal. A failure
(a crash or a count mismatch) is printed with its minimal diff against the catalog config.

Uses the helpers of tests/test_reliability.py and tests/test_runs.py, so the bench measures what the tests check.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from transformers.utils import logging as transformers_logging

from backend.arch import configs
from backend.arch.errors import ArchLabError
from backend.live import roots, runs
from backend.live.generation import GenerationRun, GenerationSettings
from backend.live.runtime import ModelRequest, load, release
from backend.present.playground import LiveRun, SlotModel
from tests import test_reliability as T
from tests import test_runs as R

RESULTS = Path(__file__).resolve().parent / "results"


def _outcome(fn) -> str:
    try:
        fn()
        return "accepted"
    except ArchLabError:
        return "refused"
    except Exception:  # noqa: BLE001 - that is what we count
        return "crash"


FAILURES = ("mismatch", "crash")


def _outcome_of(d: dict) -> tuple[str, str]:
    """(outcome, message) of config ``d``: 'ok' (counted, formula == meta model), 'refused' (one-line
    ArchLabError), or a failure: 'mismatch' (formula != meta model) or 'crash' (anything else)."""
    try:
        return T.check_backend(d), ""
    except T.CountMismatch as e:
        return "mismatch", str(e)
    except Exception as e:  # noqa: BLE001 - that is what we count
        return "crash", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def minimal_diff(key: str, d: dict, kind: str) -> dict:
    """The smallest part of ``d``'s diff against catalog config ``key`` that still fails the same way (each
    change reverted in turn while the failure stays)."""
    diff = T.config_diff(key, d)
    changed = True
    while changed and len(diff) > 1:
        changed = False
        for f in list(diff):
            trial = {k: v for k, v in diff.items() if k != f}
            if _outcome_of(T.apply_diff(key, trial))[0] == kind:
                diff, changed = trial, True
    return diff


def config_mutations(examples: int, seed: Optional[int] = None, show: int = 20) -> dict:
    """``examples`` random mutated catalog configs (hypothesis, not derandomized; ``seed`` replays a run) through
    config -> spec -> counts -> KV. Each failure is printed when found, with its minimal diff."""
    seed = random.SystemRandom().getrandbits(64) if seed is None else seed
    kinds, outcomes, failures = collections.Counter(), collections.Counter(), {}
    t0 = time.perf_counter()

    @hseed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(T.mutated_config())
    def run(case):
        kinds.update(case.kinds)
        kind, message = _outcome_of(case.config)
        outcomes[kind] += 1
        if kind in FAILURES:
            minimal = T.diff_text(case.key, minimal_diff(case.key, case.config, kind))
            if minimal not in failures:
                drawn = T.diff_text(case.key, T.config_diff(case.key, case.config))
                failures[minimal] = {
                    "kind": kind,
                    "minimal_diff": minimal,
                    "message": message,
                    "drawn": drawn,
                    "count": 0,
                }
                print(f"  {kind}: {minimal}\n    {message}\n    (drawn: {drawn})", flush=True)
            failures[minimal]["count"] += 1
        n = sum(outcomes.values())
        if n % 1000 == 0:
            dt = time.perf_counter() - t0
            print(f"  {n:,} configs in {dt:.0f} s ({n / dt:.1f}/s): {dict(outcomes)}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's zero-element tensor notes on meta builds
        level = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # config warnings (token ids outside the vocabulary, ...)
        try:
            run()
        finally:
            transformers_logging.set_verbosity(level)
    seconds = time.perf_counter() - t0
    n = sum(outcomes.values())
    return {
        "configs": n,
        "seed": seed,
        "seconds": seconds,
        "configs_per_s": n / seconds if seconds else 0.0,
        "mutations_by_kind": dict(kinds),
        "outcomes": dict(outcomes),
        "crashes": outcomes.get("crash", 0),
        "count_mismatches": outcomes.get("mismatch", 0),
        "distinct_failures": len(failures),
        "failures": list(failures.values())[:show],
    }


def direct_inputs() -> dict:
    tried = collections.defaultdict(collections.Counter)
    for bad in T.BAD_SETTINGS:
        tried["generation settings"][_outcome(lambda: GenerationRun([T.QWEN], "hi", GenerationSettings(**bad)))] += 1
    for p in ["", " \n", None, 5, "x" * 200_001]:
        tried["prompts"][_outcome(lambda: GenerationRun([T.QWEN], p, GenerationSettings()))] += 1
    for text in [
        "{",
        "[1]",
        b"\xff{}",
        "[" * 100_000 + "]" * 100_000,
        " " * (configs.MAX_CONFIG_BYTES + 1),
        '{"model_type": {"a": 1}}',
        '{"model_type": "evil"}',
        '{"model_type": "gpt2", "auto_map": {"x": 1}}',
    ]:
        tried["uploaded config.json"][_outcome(lambda: T.arch_spec(configs.parse_config_text(text)))] += 1
    for field, value in [
        ("num_experts", 10**9),
        ("num_hidden_layers", 10**9),
        ("hidden_size", 10**9),
        ("vocab_size", 10**12),
        ("num_experts_per_tok", 10**9),
        ("kv_lora_rank", 10**9),
    ]:
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
        cases = [
            ((), {}, {}),
            (("tokenizer.json", "tokenizer_config.json"), {}, {}),
            (("model.safetensors",), {}, {}),
            (("model.safetensors",), {}, {"pytorch_model.bin": b"\x80\x04junk"}),
            ((), {"intermediate_size": 480}, {}),
            ((), {"num_hidden_layers": 4, "layer_types": None}, {}),
            ((), {"auto_map": {"AutoModelForCausalLM": "evil.M"}}, {}),
            ((), {"model_type": "evil"}, {}),
            (("model.safetensors",), {}, {"model.safetensors": b"\xff" * 64}),
        ]
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
    return {
        "model": "deepseek-v3 miniature (small), CPU",
        "repeats": repeats,
        "median_s": statistics.median(lat),
        "max_s": max(lat),
        "median_step_s": step,
        "max_in_steps": max(lat) / step,
        "workers_ended": not any(r["worker_alive"] for r in rows),
    }


def root_figures() -> dict:
    """Paths outside the allowed roots (absolute, relative, ``..``, symlinks out of a root, /proc, NUL) through
    the two checks visitors meet; how many were refused and how many distinct messages they got."""
    with tempfile.TemporaryDirectory() as tmp:
        root, outside, dirs = R.make_tree(Path(tmp))
        old = os.environ.get("ARCHLAB_MODEL_DIRS")
        os.environ["ARCHLAB_MODEL_DIRS"] = dirs
        try:
            r = R.probe_roots(root, outside)
            inside = str(roots.confine(str(root / "good"))) == str((root / "good").resolve())
        finally:
            if old is None:
                os.environ.pop("ARCHLAB_MODEL_DIRS", None)
            else:
                os.environ["ARCHLAB_MODEL_DIRS"] = old
    return {
        "paths": len(R._refused_paths(root, outside)),
        "checks": r["tried"],
        "refused": r["refused"],
        "of_which_target_exists": r["exists"] * 2,
        "distinct_messages": len(r["messages"]),
        "message_is_refused_line": r["messages"] == {roots.REFUSED},
        "inside_accepted": inside,
    }


def id_figures(n: int) -> dict:
    """``n`` fresh run ids: distinct, well-formed, and the per-position entropy estimated from them."""
    ids = [runs.new_id() for _ in range(n)]
    bits = 0.0
    for pos in range(len(ids[0])):
        counts = collections.Counter(i[pos] for i in ids)
        bits += -sum(c / n * math.log2(c / n) for c in counts.values())
    return {
        "ids": n,
        "distinct": len(set(ids)),
        "well_formed": sum(map(runs.valid_id, ids)),
        "length": len(ids[0]),
        "random_bits": runs.ID_BYTES * 8,
        "estimated_bits": round(bits, 2),
        "source": "secrets.token_urlsafe",
    }


def reattach_figures(tokens: int) -> dict:
    """A run registered by one session and opened by id from another: same text and routing, and a made-up
    id refused with the one line."""
    reg = runs.Registry(gpu_total=lambda: 0)
    t0 = time.perf_counter()
    with reg.admit("owner", "generate") as ticket:
        live = LiveRun.start(
            [SlotModel("deepseek-v3", "d", "#2E91E5", True)],
            [T.MOE],
            "Experts of a layer",
            GenerationSettings(max_new_tokens=tokens, ignore_eos=True),
            "owner",
        )
        ticket.register(live)
    other = reg.job(ticket.id, "generate")
    while not other.done:
        other.pump(0.05)
    same = other is live and other.run.text(0) == live.run.text(0) and len(other.run.routing(0).steps) == tokens
    try:
        reg.get(runs.new_id())
        stranger = "found"
    except ArchLabError as e:
        stranger = "refused with the one line" if str(e) == runs.NOT_FOUND else str(e)
    return {"tokens": tokens, "same_run": same, "seconds": time.perf_counter() - t0, "made_up_id": stranger}


def retention_figures(sessions: int = 50, each: int = 20) -> dict:
    """Finished runs from ``sessions`` visitors, ``each`` apiece: how many the registry keeps (bounded)."""
    clock = R.Clock()
    reg = runs.Registry(clock=clock, gpu_total=lambda: 0, env={"ARCHLAB_QUOTA_GENERATE": "1000"})
    for i in range(sessions * each):
        job = R.Job()
        reg.register(job, "generate", f"s{i % sessions}")
        job.cancel()
        clock.t += 1
    kept = len(reg)
    lim = reg.limits()
    clock.t += lim.ttl_s + 1
    return {
        "finished_runs": sessions * each,
        "sessions": sessions,
        "kept": kept,
        "kept_limit": lim.kept,
        "kept_per_session_limit": lim.kept_per_session,
        "ttl_s": lim.ttl_s,
        "kept_after_ttl": len(reg),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=20_000, help="random mutated configs to try")
    ap.add_argument("--seed", type=int, default=None, help="replay a config fuzz (its seed is in the results)")
    ap.add_argument(
        "--only",
        choices=["configs"],
        default=None,
        help="configs: run only the config fuzz and update its section of the results",
    )
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    host = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if a.only == "configs":
        only_configs(host, a.examples, a.seed)
        return
    fig = {"host": host}
    fig["config_mutations"] = config_mutations(a.examples, a.seed)
    fig["direct_inputs"] = direct_inputs()
    _totals(fig)
    c = T.concurrent_sessions([T.QWEN, T.MOE], T.PROMPTS, a.tokens)
    fig["concurrency"] = dict(c, tokens_per_run=a.tokens)
    fig["cancel"] = cancel_figures(a.repeats)
    with pytest.MonkeyPatch().context() as mp:
        oom = T.simulate_oom(mp, ModelRequest("gpt2", mode="full", device="cpu"), T.MOE)
    fig["oom"] = {
        "model": "gpt2 full size, random fp32, CPU (OutOfMemoryError raised in its forward)",
        "weights_bytes": oom["weights_bytes"],
        "rss_returned_bytes": oom["rss_returned_bytes"],
        "released": oom["released"],
        "model_freed": oom["freed"],
        "other_model_finished": oom["run"].stats(1)["status"] == "finished",
    }
    fig["allowed_roots"] = root_figures()
    fig["run_ids"] = id_figures(100_000)
    fig["quotas"] = R.generation_quota(8, 3, 2)
    fig["quotas"]["refused"] = {i: len(m) for i, m in fig["quotas"]["refused"].items()}
    fig["quota_message"] = R.generation_quota(1, 3, 2)["refused"][0][0]
    fig["reattach"] = reattach_figures(a.tokens)
    fig["retention"] = retention_figures()
    fig["seconds"] = time.perf_counter() - t0

    _print_inputs(fig)
    for kind, counts in fig["direct_inputs"].items():
        print(f"  {kind}: {sum(counts.values())} {counts}")
    print(
        f"concurrent sessions: {c['sessions']} x {c['models']} models x {a.tokens} tokens in {c['seconds']:.2f} s; "
        f"token mismatches vs solo runs: {c['mismatches']}; builds per model: {c['builds']}"
    )
    k = fig["cancel"]
    print(
        f"cancel -> Finished(cancelled): median {k['median_s'] * 1e3:.1f} ms, max {k['max_s'] * 1e3:.1f} ms "
        f"(median step {k['median_step_s'] * 1e3:.1f} ms; max = {k['max_in_steps']:.2f} steps)"
    )
    o = fig["oom"]
    print(
        f"simulated OOM: model released {o['released']}, freed {o['model_freed']}; weights "
        f"{o['weights_bytes'] / 2**20:,.0f} MiB, RSS returned {o['rss_returned_bytes'] / 2**20:,.0f} MiB; "
        f"other model finished {o['other_model_finished']}"
    )
    r = fig["allowed_roots"]
    print(
        f"paths outside the model folders: {r['paths']} paths x 2 checks = {r['checks']}, refused {r['refused']} "
        f"({r['of_which_target_exists']} of them existing), distinct messages {r['distinct_messages']}; "
        f"inside accepted {r['inside_accepted']}"
    )
    i = fig["run_ids"]
    print(
        f"run ids: {i['ids']:,} drawn, {i['distinct']:,} distinct, {i['well_formed']:,} well formed, "
        f"{i['random_bits']} random bits, estimated {i['estimated_bits']} bits"
    )
    q = fig["quotas"]
    print(
        f"quotas: {q['sessions']} sessions x {q['asked_per_session']} runs asked (limit {q['limit']}): admitted "
        f"{sorted(set(q['admitted'].values()))} each, refused {sorted(set(q['refused'].values()))} each; "
        f"others untouched {q['others_untouched']}"
    )
    print(f"  message: {fig['quota_message']}")
    ra, rt = fig["reattach"], fig["retention"]
    print(f"re-attach by id from another session: same run {ra['same_run']}; made-up id {ra['made_up_id']}")
    print(
        f"retention: {rt['finished_runs']} finished runs from {rt['sessions']} sessions -> {rt['kept']} kept "
        f"(limits {rt['kept_limit']} in all, {rt['kept_per_session_limit']} a session); after {rt['ttl_s']:.0f} s: "
        f"{rt['kept_after_ttl']}"
    )
    _write(fig, fig["seconds"])


def _totals(fig: dict) -> None:
    """Inputs tried, crashes and count mismatches over the config fuzz and the direct inputs."""
    direct = fig.get("direct_inputs", {})
    cm = fig["config_mutations"]
    fig["inputs_tried"] = cm["configs"] + sum(sum(c.values()) for c in direct.values())
    fig["crashes"] = cm["outcomes"].get("crash", 0) + sum(c.get("crash", 0) for c in direct.values())
    fig["count_mismatches"] = cm["outcomes"].get("mismatch", 0)


def _print_inputs(fig: dict) -> None:
    cm = fig["config_mutations"]
    print(
        f"inputs tried: {fig['inputs_tried']:,}   crashes: {fig['crashes']}   "
        f"formula != meta model: {fig['count_mismatches']}"
    )
    print(
        f"  mutated configs: {cm['configs']:,} in {cm['seconds']:.0f} s, seed {cm['seed']} ({cm['outcomes']}); "
        f"mutations by kind: {cm['mutations_by_kind']}"
    )
    for f in cm["failures"]:
        print(f"    {f['kind']} x{f['count']}: {f['minimal_diff']}: {f['message']}")


def only_configs(host: dict, examples: int, seed: Optional[int]) -> None:
    """The config fuzz alone: its section of the results file is replaced, the other sections kept."""
    path = RESULTS / f"reliability-cpu{os.cpu_count()}.json"
    try:
        fig = json.loads(path.read_text())
    except (OSError, ValueError):
        fig = {}
    fig["host"] = host
    fig["config_mutations"] = config_mutations(examples, seed)
    _totals(fig)
    _print_inputs(fig)
    _write(fig, fig["config_mutations"]["seconds"])


def _write(fig: dict, seconds: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"reliability-cpu{os.cpu_count()}.json"
    out.write_text(json.dumps(fig, indent=2, default=str))
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
