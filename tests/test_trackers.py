"""A run's curves reach accelerate's TensorBoard tracker, one event log per model, equal to metrics.csv."""

import os

import pandas as pd
import pytest

from backend.train.recipe import RunSpec, preset
from backend.train.runner import TrainingRun


def _run(tmp_path):
    run = TrainingRun(RunSpec(("llama3-8b",), preset("tiny", tokens=16 * 128 * 3), "cpu"), root=tmp_path).start()
    run.join()
    assert run.view().status == "finished"
    return run


def test_a_run_logs_its_curves_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path)
    (model_dir,) = (run.folder / "tensorboard").iterdir()
    events = EventAccumulator(str(model_dir))
    events.Reload()
    assert {"train_loss", "val_loss", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    metrics = pd.read_csv(run.folder / "metrics.csv")
    train = metrics[pd.to_numeric(metrics["train_loss"], errors="coerce").notna()]
    logged = {e.step: e.value for e in events.Scalars("train_loss")}
    assert sorted(logged) == train["step"].tolist()
    assert [logged[s] for s in train["step"]] == pytest.approx(train["train_loss"].astype(float).tolist(), rel=1e-6)


def test_trackers_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_TRACKERS", "none")
    run = _run(tmp_path)
    assert not (run.folder / "tensorboard").exists()
    assert os.path.getsize(run.folder / "metrics.csv") > 0
