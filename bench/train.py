"""Training benchmark: tokens/s and MFU per architecture, models side by side in processes, peak memory.

    python bench/train.py                       # CPU: tiny preset, 4-architecture MQAR comparison (wall time)
    python bench/train.py --gpu [--budget 5M] [--steps 30] [--variants default,stock,compile] [--concurrent 8]
    python bench/train.py --zoo                 # retrain the shipped zoo (GPU) and check its validation losses
    python bench/train.py --experts-ab          # ms per step: the trainer's experts vs transformers' grouped_mm
    python bench/train.py --sweep [--gpu]       # many runs at once: one run at a time vs stacked (see sweep())

Per architecture (sized by backend.train.budget to the same budget, batch 64 × 256 on a GPU): steps/s of the
trainer's own step (``backend.train.trainer.Member``), tokens/s, and MFU = training FLOPs per token
(``budget.flops_per_token``) × tokens/s ÷ the GPU's published dense bf16 peak (``assets/gpus.json``).
"default" is the trainer as it runs (MoE experts through grouped GEMMs in the autocast dtype, ``train/experts.py``);
"fp32-grouped" is transformers' grouped_mm as is (fp32 under autocast with fp32 master weights); "stock" leaves
transformers' default expert kernel and attention; "default-attention" only transformers' default attention (eager
for gpt-oss, whose sinks SDPA lacks; the trainer takes flex attention there on a GPU); "compile" adds torch.compile. Carry flash-linear-attention (+ fla-core, einops)
for Qwen3-Next's gated delta rule on a GPU. ``--concurrent N`` trains N architectures at once in N worker
processes through ``TrainingRun`` (the app's path) and reports their aggregate tokens/s. Peak memory per
model alone is written to bench/results/train-memory.json (for the Parameters page's training-memory check).
Results: bench/results/train-<device>[-tag].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

GPU_MODELS = (
    "llama3-8b",
    "olmo2-7b",
    "gemma3-27b",
    "smollm3-3b",
    "qwen3-30b-a3b",
    "deepseek-v3",
    "gpt-oss-20b",
    "qwen3-next-80b-a3b",
)
#: dense GQA, sliding-window hybrid, MoE, MLA + MoE (Qwen3-Next's miniature needs more than the tiny preset's budget)
CPU_MODELS = ("llama3-8b", "gemma3-27b", "qwen3-30b-a3b", "deepseek-v3")


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_") + f"x{torch.cuda.device_count()}"
    return f"cpu{os.cpu_count()}"


def _peak_flops() -> float | None:
    import torch

    from backend.arch import gpus

    if not torch.cuda.is_available():
        return None
    g = gpus.by_device_name(torch.cuda.get_device_name(0))
    return g.bf16_flops if g else None


def _profile(m, stream, steps: int = 3, top: int = 15) -> list[dict]:
    """The device kernels of ``steps`` training steps, by total device time (torch.profiler), top ``top``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            m.train_step(stream[m.step])
        torch.cuda.synchronize()
    events = [
        e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA
    ]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events) or 1.0
    rows = [
        {
            "kernel": e.key[:90],
            "calls": e.count,
            "ms_per_step": e.device_time_total / 1e3 / steps,
            "share": e.device_time_total / total,
        }
        for e in events[:top]
    ]
    print(f"    device time per step {total / 1e3 / steps:.1f} ms; top kernels:")
    for r in rows:
        print(f"      {r['ms_per_step']:7.2f} ms {r['share'] * 100:5.1f}%  x{r['calls'] // steps:<5d} {r['kernel']}")
    return rows


def throughput(keys, recipe, steps: int, variant: str, device, profile: bool = False) -> list[dict]:
    """Steps/s, tokens/s and MFU of each architecture trained alone for ``steps`` steps (after warm-up);
    ``profile``: also the top device kernels of three more steps."""
    from dataclasses import replace

    import torch

    from backend.train import budget, data
    from backend.train.trainer import Member

    d = data.corpus_data()
    stream = data.BatchStream(d.train, recipe.batch, recipe.seq_len, recipe.seed)
    peak = _peak_flops()
    rows = []
    for key in keys:
        s = budget.size_to_budget(
            key,
            recipe.budget,
            recipe.budget_metric,
            seq_len=recipe.seq_len,
            vocab=d.vocab_size,
            max_positions=max(1024, recipe.seq_len),
            layers=recipe.layers,
            min_head_dim=recipe.min_head_dim,
        )
        r = recipe if variant != "compile" else replace(recipe, compile=True)
        m = Member(key, s, r, device).start(
            experts_impl={"stock": None, "fp32-grouped": "grouped_mm"}.get(variant, "grouped"),
            attention=None if variant in ("stock", "default-attention") else "auto",
        )
        warm = 8 if variant == "compile" else 3
        for _ in range(warm):
            m.train_step(stream[m.step])
        m.take_losses()
        m.sync_time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0, s0 = time.perf_counter(), m.step
        for _ in range(steps):
            m.train_step(stream[m.step])
        losses = m.take_losses()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        tok_s = (m.step - s0) * r.batch * r.seq_len / dt
        fpt = budget.flops_per_token(s.arch, r.seq_len)
        row = {
            "model": key,
            "variant": variant,
            "params": s.total,
            "active_nonemb": int(s.value) if r.budget_metric == "active" else None,
            "experts": s.experts,
            "steps": steps,
            "step_ms": dt / steps * 1e3,
            "tok_s": tok_s,
            "flops_per_token": fpt,
            "mfu": fpt * tok_s / peak if peak else None,
            "minutes_per_20M": 20e6 / tok_s / 60,
            "last_loss": losses[-1] if losses else None,
            "losses": losses,
            "peak_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
            "config": s.config,
            "batch": r.batch,
            "seq_len": r.seq_len,
        }
        rows.append(row)
        if profile and device.type == "cuda":
            row["profile"] = _profile(m, stream)
        print(
            f"  {key:20s} {variant:8s} {row['step_ms']:8.1f} ms/step {tok_s:12,.0f} tok/s "
            f"MFU {row['mfu'] * 100 if row['mfu'] else float('nan'):5.1f}%  20M tokens: {row['minutes_per_20M']:.1f} min",
            flush=True,
        )
        m.close()
        del m
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def concurrent(keys, recipe, steps: int, processes: int) -> dict:
    """``keys`` trained at once in ``processes`` worker processes through TrainingRun: aggregate tokens/s."""
    import tempfile
    from dataclasses import replace

    from backend.train.recipe import RunSpec
    from backend.train.runner import TrainingRun

    r = replace(recipe, tokens=steps * recipe.batch * recipe.seq_len, eval_every=steps)
    spec = RunSpec(tuple(keys), r, "auto").validate()
    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    run = TrainingRun(spec, root=root, processes=processes).start()
    run.join()
    wall = time.perf_counter() - t0
    v = run.view()
    trained = sum(m.tokens for m in v.models if m.status == "finished")
    train_s = max((m.elapsed_s for m in v.models), default=0.0)
    out = {
        "models": list(keys),
        "processes": processes,
        "steps": steps,
        "wall_s": wall,
        "tokens": trained,
        "aggregate_tok_s_wall": trained / wall,
        "slowest_model_train_s": train_s,
        "aggregate_tok_s_training": trained / train_s if train_s else None,
        "per_model": [{"model": m.key, "status": m.status, "tok_s": m.tok_s, "error": m.error} for m in v.models],
        "status": v.status,
    }
    print(
        f"  concurrent: {len(keys)} models in {processes} processes: {trained:,} tokens, wall {wall:.1f} s "
        f"(incl. start-up), {out['aggregate_tok_s_wall']:,.0f} tok/s over the wall, "
        f"{out['aggregate_tok_s_training'] or 0:,.0f} tok/s over the training itself",
        flush=True,
    )
    if out["aggregate_tok_s_wall"]:
        out["minutes_for_20M_each"] = len(keys) * 20e6 / out["aggregate_tok_s_wall"] / 60
        print(f"  at that rate, {len(keys)} models × 20M tokens take {out['minutes_for_20M_each']:.1f} min", flush=True)
    return out


def cpu_probe(keys, minutes_target: float = 5.0) -> dict:
    """The CPU case: a 4-architecture MQAR comparison at the tiny preset, in the app's TrainingRun, timed whole."""
    import tempfile

    from backend.train.recipe import RunSpec, preset
    from backend.train.runner import TrainingRun

    spec = RunSpec(tuple(keys), preset("tiny", data="mqar"), "cpu").validate()
    t0 = time.perf_counter()
    run = TrainingRun(spec, root=Path(tempfile.mkdtemp())).start()
    run.join()
    wall = time.perf_counter() - t0
    v = run.view()
    out = {
        "models": list(keys),
        "recipe": spec.recipe.as_dict(),
        "wall_s": wall,
        "target_s": minutes_target * 60,
        "status": v.status,
        "results": v.results,
        "per_model": [{"model": m.key, "status": m.status, "error": m.error} for m in v.models],
    }
    print(f"  CPU MQAR, tiny preset, {len(keys)} architectures: {wall / 60:.1f} min (target ≤ {minutes_target:g} min)")
    for m in v.models:
        if m.error:
            print(f"    {m.key:20s} {m.status}: {m.error}")
    for row in v.results:
        print(
            f"    {row['model']:20s} probe accuracy {row['probe_accuracy'] or 0:.3f}  val {row['val_loss']:.3f}  "
            f"{row['tok_s'] or 0:,.0f} tok/s"
        )
    return out


def zoo_check(processes: int, tolerance: float = 0.02, only: tuple = ()) -> dict:
    """Retrain the shipped zoo's seed-0 corpus models with its recorded recipe and compare each final validation
    loss (bf16 checkpoint evaluated as shipped) with the shipped one."""
    import tempfile
    from dataclasses import replace

    from backend.arch.catalog import get as entry
    from backend.live import zoo as live_zoo
    from backend.train import zoo
    from backend.train.recipe import MAX_MODELS, Recipe, RunSpec

    index = live_zoo.index()
    if not index:
        raise SystemExit("no shipped zoo to check (assets/zoo/index.json)")
    recipe = replace(Recipe.from_dict(index["recipe"]), seed=index["seeds"][0])
    gs = zoo.groups(recipe, sorted(index["models"], key=list(index["models"]).index))
    reps = [g["keys"][0] for g in gs if not only or set(g["keys"]) & set(only)]
    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    runs = zoo._run_all(
        [RunSpec(tuple(reps[i : i + MAX_MODELS]), recipe, "auto") for i in range(0, len(reps), MAX_MODELS)],
        root,
        processes,
        2,
        print,
    )
    rows = []
    for r in runs:
        for res in r.view().results:
            shipped = index["models"][res["model"]]["val_loss"]
            bf16 = root / "as_shipped" / res["model"]
            import torch
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(res["checkpoint"], dtype=torch.float32).to(
                torch.bfloat16
            ).save_pretrained(str(bf16))
            again = zoo._shipped_val_loss(bf16, recipe)
            rows.append(
                {
                    "model": res["model"],
                    "name": entry(res["model"]).name,
                    "shipped_val_loss": shipped,
                    "retrained_val_loss": again,
                    "relative_difference": again / shipped - 1,
                    "within_2_percent": abs(again / shipped - 1) <= tolerance,
                }
            )
            print(
                f"  {res['model']:20s} shipped {shipped:.4f} retrained {again:.4f} "
                f"({(again / shipped - 1) * 100:+.2f} %)",
                flush=True,
            )
    return {
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "all_within": all(r["within_2_percent"] for r in rows),
        "tolerance": tolerance,
    }


def experts_ab(keys, rounds: int = 4, steps: int = 8) -> list[dict]:
    """The trainer's MoE experts (``backend/train/experts.py``) against transformers' ``grouped_mm`` on this
    device's default, side by side: one model each from the same seed, the tiny preset's MQAR batch, their timed
    steps alternating (``rounds`` × ``steps``), ms per step."""
    import torch

    from backend.train import budget
    from backend.train.probes import probe_task
    from backend.train.recipe import preset
    from backend.train.trainer import Member

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r = preset("tiny", data="mqar")
    batch = probe_task("mqar", r.probe_vocab, r.seq_len).batch(0, 0, r.batch)
    out = []
    for key in keys:
        s = budget.size_to_budget(
            key,
            r.budget,
            r.budget_metric,
            seq_len=r.seq_len,
            vocab=r.probe_vocab,
            layers=r.layers,
            min_head_dim=r.min_head_dim,
        )
        members = {impl: Member(key, s, r, device).start(experts_impl=impl) for impl in ("grouped", "grouped_mm")}
        times = {impl: [] for impl in members}
        for _ in range(rounds):
            for impl, m in members.items():
                for _ in range(2):
                    m.train_step(batch)
                m.sync_time()
                t = time.perf_counter()
                for _ in range(steps):
                    m.train_step(batch)
                m.sync_time()
                times[impl].append((time.perf_counter() - t) / steps * 1e3)
        row = {
            "model": key,
            "device": str(device),
            "ms_per_step": times,
            "ratio_of_medians": float(sorted(times["grouped_mm"])[rounds // 2] / sorted(times["grouped"])[rounds // 2]),
        }
        out.append(row)
        print(
            f"  {key:20s} ours {min(times['grouped']):6.1f}–{max(times['grouped']):6.1f} ms/step   transformers' "
            f"grouped_mm {min(times['grouped_mm']):6.1f}–{max(times['grouped_mm']):6.1f}   "
            f"ratio {row['ratio_of_medians']:.2f}x",
            flush=True,
        )
    return out


def saved_for_backward(row: dict, recipe, device) -> dict:
    """Where a measured peak goes, for train-memory.json: one training step of ``row``'s miniature (the trainer's
    ``Member``, same batch shape) under ``torch.autograd.graph.saved_tensors_hooks``. ``saved_bytes``: the most
    bytes autograd held for the backward pass at once (each storage once, while a tensor saved in it is alive;
    parameters excluded), i.e. at the start of the backward pass; ``saved_weight_copy_bytes``: the autocast copies
    of parameters among them; ``step_start_bytes``: allocated as the step starts (fp32 weights, optimizer states,
    library workspaces). ``backend.arch.train_memory`` estimates ``saved_bytes`` as its activations + weight
    copies + the saved log-softmax."""
    from dataclasses import replace

    import numpy as np
    import torch

    from backend.arch.architecture import resolve
    from backend.train.budget import Sized
    from backend.train.saved import SavedTensors
    from backend.train.trainer import Member

    arch = resolve(dict(row["config"]))
    r = replace(recipe, batch=row["batch"], seq_len=row["seq_len"])
    m = Member(
        row["model"],
        Sized(arch.label, dict(row["config"]), arch, "active", 0.0, 0.0, arch.counts.total, arch.counts.active),
        r,
        device,
    ).start()
    rng = np.random.default_rng(0)
    batch = lambda: rng.integers(0, arch.spec.vocab_size, (r.batch, r.seq_len + 1))  # noqa: E731
    m.train_step(batch())  # optimizer states exist from the first step on
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    with SavedTensors(m.model) as saved:
        m.train_step(batch())
    torch.cuda.synchronize(device)
    m.close()
    del m
    torch.cuda.empty_cache()
    return {"saved_bytes": saved.peak, "saved_weight_copy_bytes": saved.peak_copies, "step_start_bytes": int(start)}


#: the sweep of the sweeps benchmark: OLMo 2's norm placement × QK-Norm, 5 learning rates from 1e-3 to 3e-1, 3 seeds
SWEEP_VARY = (("norm", ("pre", "post")), ("qk_norm", ("off", "on")))
SWEEP_LRS = (0.001, 0.004, 0.017, 0.07, 0.3)


def _timed(step, n: int, device) -> float:
    """Seconds per call of ``step`` over ``n`` calls (device synchronised at both ends)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / n


def sweep_rates(
    recipe,
    lrs,
    seeds,
    steps: int,
    device,
    base: str = "olmo2-7b",
    vary=SWEEP_VARY,
    modes=("alone", "alone-graph", "stacked"),
    rounds: int = 1,
) -> dict:
    """Per cell of an ablation: tokens/s of its runs trained one at a time (the single-model trainer, as runs
    took turns before stacking), of one run as a stack of one (the CUDA-graph step), and of all the cell's runs as
    one stack; each after warm-up steps, timed over ``steps`` steps on the same device in this process. The
    minutes for the whole sweep (every run × ``recipe.tokens``) follow from the rates. ``rounds`` > 1 (the CPU):
    one at a time and stacked are timed in alternating rounds and each takes its median round, so that load from
    other processes falls on both alike."""
    from dataclasses import replace

    import torch

    from backend.train import budget, data
    from backend.train.ablation import AblationSpec, plan
    from backend.train.stack import Stack
    from backend.train.sweep import max_runs
    from backend.train.trainer import Member

    d = data.corpus_data()
    spec = AblationSpec(base, vary, lrs, seeds, recipe, str(device))
    p = plan(spec)
    shape = dict(
        seq_len=recipe.seq_len,
        vocab=d.vocab_size,
        eos=0,
        pad=1,
        max_positions=max(1024, recipe.seq_len),
        max_total=recipe.max_total,
        layers=recipe.layers,
        min_head_dim=recipe.min_head_dim,
    )
    from backend.live.tokenizer import load_offline

    tok = load_offline()
    shape.update(eos=tok.eos_token_id, pad=tok.pad_token_id)
    sized = p.sizer()(recipe.budget, recipe.budget_metric, **shape)
    peak = _peak_flops()
    rows, runs_per_cell = [], len(lrs) * len(seeds)
    for cell in p.cells:
        s = sized[cell.model]
        recipes = [replace(recipe, lr=lr, seed=seed) for lr in lrs for seed in seeds]
        streams = {r.seed: data.BatchStream(d.train, recipe.batch, recipe.seq_len, r.seed) for r in recipes}
        fpt = budget.flops_per_token(s.arch, recipe.seq_len)
        row = {"cell": cell.name, "runs": runs_per_cell, "nonemb_active": s.value, "flops_per_token": fpt}
        if rounds > 1:
            members = [Member(cell.name, s, r, device).start() for r in recipes]
            st = Stack(s, recipes, [f"r{i}" for i in range(len(recipes))], device)
            one_by_one = lambda: [m.train_step(streams[m.recipe.seed][m.step]) for m in members]  # noqa: E731
            together = lambda: st.train_step([streams[r.recipe.seed][st.step] for r in st.runs])  # noqa: E731
            for _ in range(2):
                one_by_one(), together()
            times = {"alone": [], "stacked": []}
            for _ in range(rounds):
                times["alone"].append(_timed(one_by_one, steps, device) / len(members))
                times["stacked"].append(_timed(together, steps, device))
            sec = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            row.update(
                {
                    "alone_tok_s": recipe.batch * recipe.seq_len / sec["alone"],
                    "stacked_tok_s": len(recipes) * recipe.batch * recipe.seq_len / sec["stacked"],
                    "stack_runs": len(recipes),
                    "stacked_step": st.graph_note,
                    "rounds_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
                }
            )
            for m in members:
                m.close()
            st.close()
        timed_apart = modes if rounds == 1 else ()
        if "alone" in timed_apart:
            m = Member(cell.name, s, recipes[0], device).start()
            step = lambda: m.train_step(streams[m.recipe.seed][m.step])  # noqa: E731
            for _ in range(3):
                step()
            sec = _timed(step, steps, device)
            row["alone_tok_s"] = recipe.batch * recipe.seq_len / sec
            m.close()
        if "alone-graph" in timed_apart:
            st = Stack(s, recipes[:1], ["x"], device)
            step = lambda: st.train_step([streams[st.runs[0].recipe.seed][st.step]])  # noqa: E731
            for _ in range(6):
                step()
            sec = _timed(step, steps, device)
            row["alone_graph_tok_s"], row["alone_graph_step"] = recipe.batch * recipe.seq_len / sec, st.graph_note
            st.close()
        if "stacked" in timed_apart:
            most = max_runs(s, recipe, device)
            chunk = recipes[:most]
            st = Stack(s, chunk, [f"r{i}" for i in range(len(chunk))], device)
            step = lambda: st.train_step([streams[r.recipe.seed][st.step] for r in st.runs])  # noqa: E731
            for _ in range(6):
                step()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = _timed(step, steps, device)
            row.update(
                {
                    "stacked_tok_s": len(chunk) * recipe.batch * recipe.seq_len / sec,
                    "stack_runs": len(chunk),
                    "stacked_step": st.graph_note,
                    "stacked_step_ms": sec * 1e3,
                    "stacked_peak_bytes": int(torch.cuda.max_memory_allocated(device))
                    if device.type == "cuda"
                    else None,
                }
            )
            st.close()
        for k in ("alone", "alone_graph", "stacked"):
            if f"{k}_tok_s" in row:
                row[f"{k}_mfu"] = fpt * row[f"{k}_tok_s"] / peak if peak else None
                row[f"{k}_minutes"] = runs_per_cell * recipe.tokens / row[f"{k}_tok_s"] / 60
        rows.append(row)
        print(
            "  " + "  ".join(f"{k} {v:,.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    total = {
        k: sum(r[f"{k}_minutes"] for r in rows)
        for k in ("alone", "alone_graph", "stacked")
        if all(f"{k}_minutes" in r for r in rows)
    }
    tok = {k: len(rows) * runs_per_cell * recipe.tokens / (total[k] * 60) for k in total}
    return {
        "base": base,
        "vary": [list(x) for x in vary],
        "lrs": list(lrs),
        "seeds": list(seeds),
        "runs": len(rows) * runs_per_cell,
        "tokens_per_run": recipe.tokens,
        "steps_timed": steps,
        "recipe": recipe.as_dict(),
        "cells": rows,
        "sweep_minutes": total,
        "sweep_tok_s": tok,
        "speedup_stacked_vs_alone": total["alone"] / total["stacked"]
        if "alone" in total and "stacked" in total
        else None,
    }


def sweep_end_to_end(recipe, lrs, seeds, base: str = "olmo2-7b", vary=SWEEP_VARY, device: str = "cpu") -> dict:
    """The whole ablation through the app's path (``TrainingRun``: sizing, training, validation, checkpoints),
    stacked and then one run at a time, wall-clock seconds each, the same recipe."""
    from backend.train.ablation import AblationSpec, plan
    from backend.train.runner import TrainingRun

    out = {
        "base": base,
        "vary": [list(x) for x in vary],
        "lrs": list(lrs),
        "seeds": list(seeds),
        "recipe": recipe.as_dict(),
    }
    for stacked in (True, False):
        p = plan(AblationSpec(base, vary, lrs, seeds, recipe, device))
        t0 = time.perf_counter()
        run = TrainingRun(p.run, sizer=p.sizer(), stacked=stacked).start()
        run.join()
        v = run.view()
        key = "stacked" if stacked else "one_at_a_time"
        out[key] = {
            "seconds": time.perf_counter() - t0,
            "status": v.status,
            "runs": len(v.models),
            "finished": sum(m.status == "finished" for m in v.models),
            "val_losses": {m.key: m.val_loss for m in v.models},
        }
        print(f"  {key}: {out[key]['seconds']:.0f} s, {out[key]['finished']}/{out[key]['runs']} finished", flush=True)
    out["speedup"] = out["one_at_a_time"]["seconds"] / out["stacked"]["seconds"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--models", default=None)
    ap.add_argument("--budget", default=None, help="default: the preset's")
    ap.add_argument("--preset", default="small", help="recipe preset the models are shaped and trained with")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--variants", default="default")
    ap.add_argument("--concurrent", type=int, default=0, help="also train the models at once in N processes")
    ap.add_argument("--concurrent-steps", type=int, default=60)
    ap.add_argument("--memory", action="store_true", help="write bench/results/train-memory.json (GPU)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--profile", action="store_true", help="also print each model's top device kernels (GPU)")
    ap.add_argument(
        "--zoo", action="store_true", help="retrain the shipped zoo (seed 0) and check its validation losses"
    )
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--experts-ab", action="store_true", help="the trainer's experts vs transformers' grouped_mm")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="OLMo 2's 2 × 2 (norm × QK-Norm) sweep: one run at a time vs stacked (GPU: rates and minutes "
        "at 1M parameters × 10M tokens, 5 learning rates × 3 seeds, and a DeepSeek MoE sweep; "
        "CPU: step rates at the tiny preset, 2 learning rates × 2 seeds; --end-to-end also trains it both ways)",
    )
    ap.add_argument("--tokens", default=None, help="tokens per run (sweep)")
    ap.add_argument(
        "--end-to-end", action="store_true", help="CPU sweep: also the whole ablation through TrainingRun, both ways"
    )
    ap.add_argument("--sweep-parts", default="olmo2,moe", help="GPU sweep parts: olmo2 (the 2 × 2), moe (DeepSeek)")
    a = ap.parse_args()
    import torch

    from backend.train.recipe import parse_amount, preset

    out = {"device": _device_name(), "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    import transformers

    out["transformers"] = transformers.__version__
    if a.sweep:
        if a.gpu:
            if not torch.cuda.is_available():
                print("no CUDA GPU", file=sys.stderr)
                return 2
            dev = torch.device("cuda")
            recipe = preset(
                "small",
                budget=parse_amount(a.budget or "1M"),
                tokens=int(parse_amount(a.tokens or "10M")),
                batch=64,
                seq_len=256,
            )
            parts = a.sweep_parts.split(",")
            if "olmo2" in parts:
                out["sweep"] = sweep_rates(recipe, SWEEP_LRS, (0, 1, 2), a.steps, dev)
            if "moe" in parts:
                out["moe_sweep"] = sweep_rates(
                    recipe,
                    (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                    (0, 1, 2),
                    a.steps,
                    dev,
                    base="deepseek-v3",
                    vary=(("shared_expert", ("on",)),),
                    modes=("alone", "stacked"),
                )
        else:
            recipe = preset("tiny", **({"tokens": int(parse_amount(a.tokens))} if a.tokens else {}))
            torch.set_num_threads(os.cpu_count() or 1)
            print("step rates, each cell's 4 runs one at a time against one stack of 4:", flush=True)
            out["sweep_cpu_rates"] = sweep_rates(recipe, (3e-3, 1e-1), (0, 1), a.steps, torch.device("cpu"), rounds=5)
            print(f"  stacked vs one at a time: {out['sweep_cpu_rates']['speedup_stacked_vs_alone']:.2f}x", flush=True)
            if a.end_to_end:
                out["sweep_cpu"] = sweep_end_to_end(recipe, (3e-3, 1e-1), (0, 1))
    elif a.experts_ab:
        out["experts_ab"] = experts_ab(
            a.models.split(",") if a.models else ("qwen3-30b-a3b", "deepseek-v3", "gpt-oss-20b")
        )
    elif a.zoo:
        out["zoo_check"] = zoo_check(a.processes, only=tuple(a.models.split(",")) if a.models else ())
    elif not a.gpu:
        out["cpu_mqar"] = cpu_probe(a.models.split(",") if a.models else CPU_MODELS)
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU", file=sys.stderr)
            return 2
        keys = a.models.split(",") if a.models else GPU_MODELS
        recipe = preset(a.preset, **({"budget": parse_amount(a.budget)} if a.budget else {}))
        out["recipe"] = recipe.as_dict()
        out["throughput"] = []
        for variant in a.variants.split(","):
            print(
                f"{variant}: {len(keys)} architectures at {recipe.budget:,.0f} {recipe.budget_metric} parameters, "
                f"batch {recipe.batch} × {recipe.seq_len}",
                flush=True,
            )
            out["throughput"] += throughput(keys, recipe, a.steps, variant, torch.device("cuda"), a.profile)
        if a.concurrent:
            out["concurrent"] = concurrent(keys, recipe, a.concurrent_steps, a.concurrent)
        if a.memory:
            rows = [
                {
                    "model": r["model"],
                    "config": r["config"],
                    "batch": r["batch"],
                    "seq_len": r["seq_len"],
                    "dtype": "bf16",
                    "master_fp32": True,
                    "checkpointing": False,
                    "measured_peak_bytes": r["peak_bytes"],
                    **saved_for_backward(r, recipe, torch.device("cuda")),
                }
                for r in out["throughput"]
                if r["variant"] == "default"
            ]
            (RESULTS / "train-memory.json").write_text(
                json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=1) + "\n"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"train-{out['device']}{'-' + a.tag if a.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
