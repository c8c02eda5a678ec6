"""Ablations end to end: the CLI round trip, the same batches for every variant of a seed, the summary's statistics
(diverged runs marked, not dropped; best learning rate, LR sensitivity and verdicts), bad input in one line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from backend.arch.errors import ArchLabError
from backend.train import statistics as st
from backend.train.ablation import AblationSpec, parse_list, plan, run_key, summarize
from backend.train.recipe import preset

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"},
        timeout=900,
    )


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    """A real 2-cell ablation from the command line: OLMo 2 with and without QK-Norm, 2 learning rates, 2 seeds."""
    runs = tmp_path_factory.mktemp("runs")
    spec = runs / "ablation.json"
    p = cli(
        "ablate",
        "--base",
        "olmo2-7b",
        "--vary",
        "qk_norm=off,on",
        "--preset",
        "tiny",
        "--tokens",
        "2k",
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--layers",
        "2",
        "--lrs",
        "1e-3,1e-2",
        "--seeds",
        "0,1",
        "--device",
        "cpu",
        "--save-spec",
        str(spec),
    )
    assert p.returncode == 0, p.stderr
    p = cli("ablate", "--spec", str(spec), "--runs-dir", str(runs))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    folder = next(f for f in runs.iterdir() if (f / "summary.json").is_file())
    return p.stdout, folder, AblationSpec.from_json(spec.read_text())


def test_the_cli_round_trip_writes_a_summary(tiny_ablation):
    out, folder, spec = tiny_ablation
    summary = json.loads((folder / "summary.json").read_text())
    assert [c["name"] for c in summary["cells"]] == ["qk_norm=off", "qk_norm=on"]
    assert [c["reference"] for c in summary["cells"]] == [False, True]  # OLMo 2 has QK-Norm: the base is "on"
    assert summary["quick_look"] and "2 seed" in summary["note"]
    for cell in summary["cells"]:
        assert [g["lr"] for g in cell["grid"]] == [0.001, 0.01]
        assert all(len(g["losses"]) == 2 for g in cell["grid"])
    (comp,) = summary["comparisons"]
    assert comp["cell"] == "qk_norm=off" and comp["reference"] == "qk_norm=on"
    assert comp["verdict"] == st.verdict(st.Interval(**comp["loss_difference"]))
    results = pd.read_csv(folder / "results.csv")
    assert len(results) == 8 and set(results["status"]) <= {"finished", "diverged"}
    assert "verdict" in out and "qk_norm=off" in out
    # the summary is what the run's rows give
    again = summarize(plan(spec), results.to_dict("records"))
    assert again["cells"][0]["best"] == pytest.approx(summary["cells"][0]["best"], nan_ok=True)


def test_the_same_seed_gives_every_variant_the_same_batches(tiny_ablation):
    _, folder, spec = tiny_ablation
    results = pd.read_csv(folder / "results.csv").set_index("model")
    for seed in spec.seeds:
        hashes = {
            results.loc[run_key(cell, lr, seed), "stream_sha256"]
            for cell in ("qk_norm=off", "qk_norm=on")
            for lr in spec.lrs
        }
        assert len(hashes) == 1, f"seed {seed}: {hashes}"
    assert (
        results.loc[run_key("qk_norm=on", 0.001, 0), "stream_sha256"]
        != results.loc[run_key("qk_norm=on", 0.001, 1), "stream_sha256"]
    )


def _row(cell, lr, seed, loss, init=7.6, status="finished", diverged=False, **kw):
    return {
        "model": run_key(cell, lr, seed),
        "status": status,
        "val_loss": loss,
        "init_loss": init,
        "diverged": diverged,
        "lr": lr,
        "seed": seed,
        **kw,
    }


def _spec():
    return AblationSpec("olmo2-7b", (("qk_norm", ("off", "on")),), (1e-3, 1e-2, 1e-1), (0, 1, 2), preset("tiny"), "cpu")


def test_diverged_runs_are_marked_not_dropped_and_the_statistics_are_worked_by_hand():
    p = plan(_spec())
    rows = []
    for seed, (a, b) in enumerate([(3.00, 3.10), (3.02, 3.11), (2.98, 3.09)]):
        rows += [
            _row("qk_norm=off", 1e-3, seed, 3.5),
            _row("qk_norm=off", 1e-2, seed, a),
            _row("qk_norm=off", 1e-1, seed, float("nan"), status="diverged", diverged=True),
            _row("qk_norm=on", 1e-3, seed, 3.4),
            _row("qk_norm=on", 1e-2, seed, b),
            _row("qk_norm=on", 1e-1, seed, 3.2),
        ]
    s = summarize(p, rows)
    off, on = s["cells"]
    assert off["grid"][2]["diverged"] == 3 and off["grid"][2]["losses"] == [None, None, None]
    assert off["best_lr"] == 0.01 and on["best_lr"] == 0.01  # a grid point with diverged seeds is never the best
    # LR sensitivity, seed 0: off: mean(3.5, 3.00, 7.6) - 3.00; on: mean(3.4, 3.10, 3.2) - 3.10
    assert off["lr_sensitivity_per_seed"][0] == pytest.approx((3.5 + 3.0 + 7.6) / 3 - 3.0)
    assert on["lr_sensitivity_per_seed"][0] == pytest.approx((3.4 + 3.1 + 3.2) / 3 - 3.1)
    (comp,) = s["comparisons"]
    d = comp["loss_difference"]
    assert d["mean"] == pytest.approx(-0.1, abs=1e-9) and d["high"] < 0 and comp["verdict"] == "lower"
    assert comp["lr_sensitivity_verdict"] == "higher"  # diverging at 0.1 makes QK-Norm off more sensitive


def test_a_missing_run_is_no_divergence():
    p = plan(_spec())
    rows = [
        _row(c, lr, s, 3.0 + 0.01 * s)
        for c in ("qk_norm=off", "qk_norm=on")
        for lr in (1e-3, 1e-2, 1e-1)
        for s in (0, 1, 2)
        if not (c == "qk_norm=off" and lr == 1e-1 and s == 2)
    ]
    s = summarize(p, rows)
    off = s["cells"][0]
    assert off["grid"][2]["missing"] == 1 and off["grid"][2]["diverged"] == 0
    assert len(off["lr_sensitivity_per_seed"]) == 2  # seed 2's curve is incomplete, so it has no sensitivity


@pytest.mark.parametrize(
    "args, message",
    [
        (["--base", "olmo2-7b", "--vary", "qk_nrm=off,on"], "unknown axis 'qk_nrm'"),
        (["--base", "olmo2-7b", "--vary", "qk_norm=sideways"], "qk_norm"),
        (["--base", "olmo2-7b", "--vary", "qk_norm=off,on", "--lrs", "1e-3,abc"], "--lrs must be comma-separated"),
        (["--base", "olmo2-7b", "--vary", "batch=8,16"], "cannot vary inside one ablation"),
        (["--base", "no-such-model", "--vary", "qk_norm=off,on"], "no-such-model"),
        (["--vary", "qk_norm=off,on"], "--base is required"),
    ],
)
def test_bad_input_is_one_line(args, message):
    p = cli("ablate", *args, "--preset", "tiny", "--dry-run")
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_a_grid_too_large_is_refused_before_training():
    with pytest.raises(ArchLabError, match="at most 512"):
        AblationSpec(
            "olmo2-7b",
            (("qk_norm", ("off", "on")), ("norm", ("pre", "post", "sandwich"))),
            tuple(10**-k for k in range(1, 8)),
            tuple(range(20)),
            preset("tiny"),
            "cpu",
        ).validate()


def test_parse_list_and_spec_json_round_trip():
    assert parse_list("1e-3, 3e-3") == (0.001, 0.003)
    spec = _spec()
    assert AblationSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ArchLabError):
        AblationSpec.from_json('{"base": "olmo2-7b"}')
    assert math.isclose(spec.recipe.lr_at(0), spec.recipe.lr / spec.recipe.warmup_steps)
