"""Findings: the claims file is sound, every shipped summary and verdict is what its recorded runs give, every
verdict follows from its interval, and a quick MQAR run on the CPU learns the task above chance."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from backend.train import findings as F
from backend.train.ablation import plan, summarize

SHIPPED = [
    (c.name, mode) for c in F.claims() for mode in F.MODES if (F.evidence_dir(c.name, mode) / "verdict.json").is_file()
]


def test_every_claim_names_its_source_and_builds_its_ablations():
    names = [c.name for c in F.claims()]
    assert len(names) == len(set(names)) >= 7
    for c in F.claims():
        assert c.claim and c.source["label"] and c.source["cite"] and c.source["reports"]
        ablations = {a["name"] for a in c.ablations}
        assert {s["ablation"] for s in c.sanity} <= ablations, c.name
        assert c.sanity, f"{c.name}: no trained verdict without a sanity check"
        for k in c.comparisons:
            assert k["ablation"] in ablations and k["metric"] in F.METRICS
            assert k["expected"] in (None, "lower", "higher", "same")
        for mode in F.MODES:
            for a in c.ablations:
                spec = F.ablation_spec(c, a["name"], mode)
                cells = {cell.name for cell in plan(spec).cells}
                for k in c.comparisons:
                    if k["ablation"] == a["name"]:
                        assert {k["a"], k["b"]} <= cells, (c.name, k, cells)
                if mode == "quick":
                    assert len(spec.seeds) >= 2 and spec.recipe.name.endswith("(quick)")
                else:
                    assert len(spec.seeds) >= 3


@pytest.mark.parametrize("name, mode", SHIPPED)
def test_a_shipped_summary_is_what_its_recorded_runs_give(name, mode):
    for abl, ev in F.load_evidence(name, mode).items():
        again = summarize(plan(ev.spec), ev.results.to_dict("records"))
        for old, new in zip(ev.summary["cells"], again["cells"]):
            assert old["name"] == new["name"] and old["best_lr"] == new["best_lr"], (abl, old["name"])
            for key in ("best", "lr_sensitivity"):
                for f in ("mean", "low", "high"):
                    a, b = (old[key] or {}).get(f), (new[key] or {}).get(f)
                    assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9), (abl, old["name"], key, f)
        assert [c["verdict"] for c in ev.summary["comparisons"]] == [c["verdict"] for c in again["comparisons"]]


@pytest.mark.parametrize("name, mode", SHIPPED)
def test_a_shipped_verdict_is_what_its_evidence_gives_and_follows_from_its_intervals(name, mode):
    c = F.claim(name)
    stored = json.loads((F.evidence_dir(name, mode) / "verdict.json").read_text())
    judged = F.judge(c, F.load_evidence(name, mode))
    assert judged["verdict"] == stored["verdict"]
    for k in judged["comparisons"]:
        d = k["difference"]
        if d["low"] is None:
            assert k["measured"] == "no interval"
            continue
        assert k["measured"] == ("lower" if d["high"] < 0 else "higher" if d["low"] > 0 else "within noise")
        # the interval is the t interval of the paired differences that are shown beside it
        pairs = [a - b for a, b in zip(k["a_values"], k["b_values"]) if a is not None and b is not None]
        assert d["mean"] == pytest.approx(np.mean(pairs)) and d["n"] == len(pairs)
        half = stats.t.ppf(0.975, len(pairs) - 1) * np.std(pairs, ddof=1) / math.sqrt(len(pairs))
        assert d["high"] - d["mean"] == pytest.approx(half, rel=1e-6, abs=1e-12)
        if k["verdict"] not in (None, "no verdict (sanity not shown)"):
            if k["expected"] == "same":
                d, m = k["difference"], k["margin"]
                inside = m is not None and -m < d["low"] and d["high"] < m
                assert k["verdict"] == (
                    "contradicts"
                    if k["measured"] in ("lower", "higher")
                    else "supports"
                    if inside
                    else "inconclusive at this scale"
                )
            else:
                assert (
                    k["verdict"]
                    == {True: "supports", False: "contradicts", None: "inconclusive at this scale"}[
                        None if k["measured"] == "within noise" else k["measured"] == k["expected"]
                    ]
                )


def _evidence(cells: dict, metric_rows=None) -> F.Evidence:
    """Synthetic evidence: {cell: [(lr, seed, loss)]} with the loss at initialisation 7.6."""
    from backend.train.ablation import AblationSpec, run_key
    from backend.train.recipe import preset

    seeds = tuple(sorted({seed for runs in cells.values() for _, seed, _ in runs}))
    spec = AblationSpec("olmo2-7b", (("qk_norm", tuple(cells)),), (0.01,), seeds, preset("tiny"), "cpu")
    rows = [
        {
            "model": run_key(f"qk_norm={cell}", lr, seed),
            "status": "finished",
            "val_loss": loss,
            "init_loss": 7.6,
            "diverged": False,
            "lr": lr,
            "seed": seed,
        }
        for cell, runs in cells.items()
        for lr, seed, loss in runs
    ]
    summary = summarize(plan(spec), rows)
    return F.Evidence("abl", spec, summary, pd.DataFrame(rows), pd.DataFrame())


def test_verdicts_follow_the_rules_on_worked_cases():
    c = F.Claim(
        "t",
        "t",
        "t",
        {},
        "",
        ({"name": "abl"},),
        {},
        ({"kind": "learns", "ablation": "abl"},),
        ({"ablation": "abl", "metric": "loss", "a": "qk_norm=off", "b": "qk_norm=on", "expected": "lower"},),
    )
    lower = _evidence(
        {"off": [(0.01, s, 3.0 + 0.01 * s) for s in range(3)], "on": [(0.01, s, 3.2 + 0.012 * s) for s in range(3)]}
    )
    v = F.judge(c, {"abl": lower})
    assert v["sanity"][0]["holds"] and v["comparisons"][0]["measured"] == "lower" and v["verdict"] == "supports"
    higher = _evidence(
        {"off": [(0.01, s, 3.3 + 0.01 * s) for s in range(3)], "on": [(0.01, s, 3.2 + 0.012 * s) for s in range(3)]}
    )
    assert F.judge(c, {"abl": higher})["verdict"] == "contradicts"
    same = dict(c.comparisons[0], expected="same")
    noisy = _evidence(
        {
            "off": [(0.01, 0, 3.0), (0.01, 1, 3.3), (0.01, 2, 3.1)],
            "on": [(0.01, 0, 3.2), (0.01, 1, 3.0), (0.01, 2, 3.15)],
        }
    )
    null = F.Claim(**{**c.__dict__, "comparisons": (same,)})
    # "no difference": an interval that holds zero but reaches past the reference's seed spread does not support it
    assert F.judge(null, {"abl": noisy})["verdict"] == "inconclusive at this scale"
    tight = _evidence(
        {
            "off": [(0.01, 0, 3.0), (0.01, 1, 3.3), (0.01, 2, 3.1)],
            "on": [(0.01, 0, 3.01), (0.01, 1, 3.29), (0.01, 2, 3.1)],
        }
    )
    v = F.judge(null, {"abl": tight})  # differences -0.01, +0.01, 0: well inside ± the seeds' spread (sd 0.14)
    assert v["verdict"] == "supports"
    assert v["comparisons"][0]["margin"] == pytest.approx(np.std([3.01, 3.29, 3.1], ddof=1))
    two = _evidence({"off": [(0.01, s, 3.0 + 0.01 * s) for s in range(2)], "on": [(0.01, s, 3.2) for s in range(2)]})
    assert F.judge(c, {"abl": two})["verdict"] == "no verdict: fewer than 3 seeds"
    assert F.judge(c, {"abl": noisy})["verdict"] == "inconclusive at this scale"
    unlearned = _evidence(
        {"off": [(0.01, s, 7.7 + 0.01 * s) for s in range(3)], "on": [(0.01, s, 7.8 + 0.01 * s) for s in range(3)]}
    )
    v = F.judge(c, {"abl": unlearned})
    assert v["verdict"].startswith("no verdict") and v["comparisons"][0]["verdict"] == "no verdict (sanity not shown)"
    assert "not met by qk_norm=off (not below), qk_norm=on (not below)" in v["verdict"]  # says which cells failed
    failed = _evidence(
        {"off": [(0.01, s, float("nan")) for s in range(3)], "on": [(0.01, s, 3.2 + 0.012 * s) for s in range(3)]}
    )
    assert "qk_norm=off (every learning rate diverged or failed)" in F.judge(c, {"abl": failed})["verdict"]
    # a failed sanity check blocks only its own ablation's comparisons
    both = F.Claim(
        **{
            **c.__dict__,
            "ablations": ({"name": "abl"}, {"name": "other"}),
            "sanity": c.sanity + ({"kind": "learns", "ablation": "other"},),
            "comparisons": c.comparisons + (dict(c.comparisons[0], ablation="other"),),
        }
    )
    v = F.judge(both, {"abl": lower, "other": dataclasses.replace(unlearned, name="other")})
    assert [k["verdict"] for k in v["comparisons"]] == ["supports", "no verdict (sanity not shown)"]
    assert v["verdict"] == "supports (no verdict on other: the task was not shown learnable)"


def test_a_quick_mqar_run_on_the_cpu_learns_the_task_above_chance():
    """100 steps of a 2-layer dense miniature on MQAR (sequences of 64, 4 to 8 pairs): its accuracy at 4 pairs is
    far above chance (one of the vocabulary's upper half of values), by an exact binomial test."""
    import torch

    from backend.train.budget import size_to_budget
    from backend.train.probes import ProbeTask
    from backend.train.recipe import preset
    from backend.train.stack import Stack

    task = ProbeTask("mqar", 256, 64, (4, 8), 0.01)
    r = preset(
        "tiny",
        budget=100_000,
        layers=2,
        batch=32,
        seq_len=64,
        lr=3e-3,
        tokens=32 * 64 * 100,
        data="mqar",
        probe_vocab=256,
    )
    s = size_to_budget("llama3-8b", r.budget, seq_len=64, vocab=256, eos=0, pad=0, layers=2, min_head_dim=16)
    stack = Stack(s, [r], ["a"], torch.device("cpu"))
    for step in range(r.steps):
        stack.train_step([task.batch(0, step, r.batch)])
    examples = 128
    acc = stack.probe_accuracy(task, examples)[0][0][(4, 64)]
    answers = examples * 4
    test = stats.binomtest(round(acc * answers), answers, p=1 / (256 // 2), alternative="greater")
    assert test.pvalue < 1e-6, (acc, test)
