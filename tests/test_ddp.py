"""One model over several processes (``torchrun`` / ``accelerate launch``, DDP), on the CPU with gloo: the same
run as one process (batches, losses, routers, one run folder, loadable checkpoints), and one-line refusals.

Tolerance: fp32 on the CPU, where DDP changes only the order of summation (two half-batch gradient sums
averaged instead of one whole-batch sum). Measured: one step's gradients agree to ~4e-7 relative, 12 AdamW
steps leave weights within ~1e-5 and per-step losses within ~1e-6 (2 ulp at 7.6). ``TOL`` = 1e-4 keeps a
100× margin over that, and is still 100× below what a real divergence gives (a process training on other
rows, or a router missing the other process's load, moves the second step's loss by 1e-2 or more). The
gradient scale, which AdamW and clipping would hide from the losses, is checked on one step directly.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from backend.__main__ import main
from backend.train import cli
from backend.train.distributed import Shard
from backend.train.runner import TrainingRun

ROOT = Path(__file__).resolve().parents[1]
MODELS = "llama3-8b,qwen3-30b-a3b"  # one dense, one MoE (Switch-style aux loss)
FLAGS = [
    "--models",
    MODELS,
    "--data",
    "mqar",
    "--preset",
    "tiny",
    "--budget",
    "100k",
    "--layers",
    "2",
    "--batch",
    "8",
    "--seq-len",
    "64",
    "--tokens",
    str(8 * 64 * 12),
    "--device",
    "cpu",
]
TOL = 1e-4


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _launch(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """2 CPU processes under torchrun, each process's output in its own log files."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(tmp_path / "logs"),
        "--redirects",
        "3",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _logs(tmp_path: Path, rank: int) -> str:
    files = sorted((tmp_path / "logs").rglob(f"attempt_*/{rank}/std*.log"))
    assert files, "torchrun wrote no per-process logs"
    return "".join(f.read_text() for f in files)


def _run_folder(root: Path) -> Path:
    runs = [p for p in root.iterdir() if (p / "recipe.json").is_file()]
    assert len(runs) == 1, f"expected one run folder in {root}, found {runs}"
    return runs[0]


def _train_losses(metrics: pd.DataFrame, key: str) -> np.ndarray:
    m = metrics[(metrics.model == key) & metrics.train_loss.notna()]
    return m.sort_values("step").train_loss.to_numpy(float)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same flags trained by one process (in this one) and by 2 DDP processes (torchrun, gloo)."""
    tmp = tmp_path_factory.mktemp("ddp")
    parser = argparse.ArgumentParser()  # the flags parsed as ``python -m backend train`` parses them
    cli.add_parser(parser.add_subparsers(dest="cmd"))
    spec, _ = cli.spec_from_args(parser.parse_args(["train", *FLAGS]))
    one = TrainingRun(spec, root=tmp / "one").start()
    one.join(600)
    assert one.view().status == "finished", one.view().message
    done = _launch(tmp, ["-m", "backend", "train", *FLAGS, "--runs-dir", str(tmp / "ddp")])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + _logs(tmp, 0)[-3000:]
    return SimpleNamespace(spec=spec, one=Path(one.folder), ddp=_run_folder(tmp / "ddp"), tmp=tmp)


def test_ddp_trains_the_same_run_as_one_process(runs):
    r = runs.spec.recipe
    assert [p.name for p in runs.ddp.parent.iterdir()] == [runs.ddp.name]  # one folder, nothing else written
    recipe = json.loads((runs.ddp / "recipe.json").read_text())
    assert recipe["run_id"] == runs.ddp.name and "DDP over 2 processes (gloo)" in recipe["shared"]["workers"]
    one, ddp = pd.read_csv(runs.one / "results.csv"), pd.read_csv(runs.ddp / "results.csv")
    assert list(ddp.status) == ["finished", "finished"]
    for key in MODELS.split(","):
        a, b = one[one.model == key].iloc[0], ddp[ddp.model == key].iloc[0]
        assert a.stream_sha256 == b.stream_sha256  # the hash of the global batches: byte-identical streams
        info = json.loads((Path(b.checkpoint) / "training.json").read_text())
        assert info["stream_sha256"] == a.stream_sha256 and info["batches"] == r.steps
        la = _train_losses(pd.read_csv(runs.one / "metrics.csv"), key)
        lb = _train_losses(pd.read_csv(runs.ddp / "metrics.csv"), key)
        assert len(la) == len(lb) == r.steps
        assert np.abs(la - lb).max() < TOL, (key, la, lb)
        assert abs(a.val_loss - b.val_loss) < TOL
    # the MoE routers saw the global load: the same selections as one process, logged by rank 0
    ra, rb = pd.read_csv(runs.one / "routing.csv"), pd.read_csv(runs.ddp / "routing.csv")
    assert len(ra) == len(rb) > 0
    la = np.array([[int(x) for x in s.split()] for s in ra.load])
    lb = np.array([[int(x) for x in s.split()] for s in rb.load])
    assert (la.sum(1) == lb.sum(1)).all() and np.abs(la - lb).sum() <= 0.01 * la.sum()
    assert np.allclose(ra.aux_loss, rb.aux_loss, atol=TOL)


def test_only_rank_0_speaks(runs):
    assert _logs(runs.tmp, 1) == ""
    out = _logs(runs.tmp, 0)
    assert "DDP over 2 processes" in out and "finished: " in out and runs.ddp.name in out
    assert "Traceback" not in out and "Warning" not in out


def test_ddp_checkpoints_load_and_hold_the_trained_weights(runs):
    from transformers import AutoModelForCausalLM

    from backend.train.outcome import probe_eval_batch as _probe_eval_batch
    from backend.train.outcome import probe_loss as _probe_loss
    from backend.train.probes import probe_task

    r = runs.spec.recipe
    task = probe_task(r.data, r.probe_vocab, r.seq_len)
    results = pd.read_csv(runs.ddp / "results.csv")
    for row in results.itertuples():
        model = AutoModelForCausalLM.from_pretrained(row.checkpoint)
        m = SimpleNamespace(model=model, device=torch.device("cpu"), recipe=r, routers=None)
        assert abs(_probe_loss(m, _probe_eval_batch(task, r)) - row.val_loss) < 1e-5


GRADCHECK = textwrap.dedent("""
    import torch, torch.distributed as dist
    from backend.train import distributed
    from backend.train.budget import size_to_budget
    from backend.train.probes import probe_task
    from backend.train.recipe import preset
    from backend.train.runner import _quiet_transformers
    from backend.train.trainer import Member

    _quiet_transformers()
    g = distributed.init("cpu")
    r = preset("tiny", budget=100_000, layers=2, batch=8, seq_len=64, data="mqar", probe_vocab=256, grad_clip=0.0)
    task = probe_task("mqar", 256, 64)
    for key in ("qwen3-30b-a3b", "deepseek-v3", "llama3-8b"):   # aux loss, aux-loss-free bias, dense
        s = size_to_budget(key, r.budget, "active", seq_len=64, vocab=256, eos=0, pad=0, max_positions=1024,
                           layers=2, min_head_dim=16)
        grads = {}
        members = {"ddp": Member(key, s, r, torch.device("cpu"), group=g).start(),
                   "one": Member(key, s, r, torch.device("cpu")).start()}
        for tag, m in members.items():
            keep = lambda tag=tag, m=m: grads.__setitem__(tag, [p.grad.clone() for p in m.model.parameters()])
            m.optimizer.step = keep  # the gradient, before the update
            m.train_step(task.batch(0, 3, 8))  # the global batch: the DDP member takes its rows
        rel = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                  for a, b in zip(grads["ddp"], grads["one"]))
        losses = [members[t].take_losses()[0] for t in ("ddp", "one")]
        bias = [b.clone() for b in (members["ddp"].routers._bias if members["ddp"].routers else []) if b is not None]
        every = [None, None]
        dist.all_gather_object(every, bias)
        same = all(torch.equal(x, y) for x, y in zip(*every))
        one_bias = [b for b in (members["one"].routers._bias if members["one"].routers else []) if b is not None]
        if g.main:
            print(f"CHECK {key} {rel:.3e} {abs(losses[0] - losses[1]):.3e} {int(same)} "
                  f"{int(all(torch.equal(x, y) for x, y in zip(bias, one_bias)))} {len(bias)}", flush=True)
        for m in members.values():
            m.close()
    g.close(True)
""")


def test_one_ddp_step_has_the_one_process_gradient(tmp_path):
    """Without clipping, the DDP-averaged gradient of a step is the gradient of the global batch's mean loss
    (probe answers counted over the global batch, the aux loss over the global load), and every process's
    DeepSeek bias moved as one process's did."""
    script = tmp_path / "gradcheck.py"
    script.write_text(GRADCHECK)
    done = _launch(tmp_path, [str(script)])
    out = _logs(tmp_path, 0)
    assert done.returncode == 0, out[-3000:] + _logs(tmp_path, 1)[-3000:]
    checks = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("CHECK ")}
    assert set(checks) == {"qwen3-30b-a3b", "deepseek-v3", "llama3-8b"}
    for key, (rel, dloss, same, as_one, _n_bias) in checks.items():
        assert float(rel) < 1e-5 and float(dloss) < 1e-5 and same == "1" and as_one == "1", (key, checks[key])
    assert int(checks["deepseek-v3"][4]) > 0  # its bias was compared


def test_a_process_takes_its_own_rows_and_counts_the_global_targets():
    s = object.__new__(Shard)
    s.group = SimpleNamespace(rank=1, world=2)
    text = np.arange(8 * 65).reshape(8, 65)
    assert (s.rows(text) == text[4:]).all() and s.count == 8 * 64
    from backend.train.probes import IGNORE, probe_task

    b = probe_task("mqar", 256, 64).batch(0, 0, 8)
    part = s.rows(b)
    assert (part.inputs == b.inputs[4:]).all() and (part.labels == b.labels[4:]).all()
    assert s.count == int((b.labels != IGNORE).sum())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zoo"], "--zoo trains many small runs"),
        (["--models", "llama3-8b", "--processes", "2"], "drop --processes"),
        (["--models", "llama3-8b", "--batch", "7"], "the batch (7) must divide by the 2 processes"),
        (["--models", "llama3-8b", "--device", "cuda:1"], "the GPU of its local rank"),
        (["--models", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_input_under_a_launch_is_one_line_from_rank_0(monkeypatch, capsys, args, message):
    """Refused before any process group is joined; rank 0 says it once, the others exit 2 in silence."""
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        assert main(["train", "--preset", "tiny", "--data", "mqar", *args]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        if rank:
            assert err == ""
        else:
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
