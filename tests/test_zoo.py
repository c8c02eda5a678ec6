"""The shipped trained zoo: every catalog architecture has one, it loads as it is, reproduces its recorded
validation loss, beats the same architecture untrained by a wide margin, and keeps its routing."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.arch import catalog
from backend.arch.architecture import resolve
from backend.live import zoo
from backend.live.tokenizer import load_offline
from backend.train import data
from backend.train.recipe import Recipe
from backend.train.zoo import CHECK_WINDOWS, _shipped_val_loss


def loss(model, windows) -> float:
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), 32):
            w = torch.from_numpy(windows[i : i + 32].astype(np.int64))
            logits = model(input_ids=w[:, :-1], use_cache=False).logits.float()
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"
                )
            )
            n += w[:, 1:].numel()
    return total / n


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return Recipe.from_dict(zoo.recipe())


@pytest.fixture(scope="module")
def windows(recipe):
    return data.validation_windows(data.corpus_data().validation, recipe.seq_len, CHECK_WINDOWS)


def test_every_catalog_architecture_has_a_trained_miniature():
    assert set(zoo.index()["models"]) == set(catalog.keys())
    assert zoo.recipe()["data"] == "corpus" and len(zoo.index()["seeds"]) >= 3


@pytest.mark.parametrize("folder", sorted({row["folder"] for row in zoo.index()["models"].values()}))
def test_each_checkpoint_loads_as_it_is_and_reproduces_its_check_loss(folder, windows):
    path = zoo.zoo_dir() / folder
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors"} <= files and not files & {"pytorch_model.bin", "model.bin"}
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(load_offline())
    rows = [r for r in zoo.index()["models"].values() if r["folder"] == folder]
    assert loss(model, windows) == pytest.approx(rows[0]["check"]["val_loss"], abs=1e-4)


@pytest.mark.parametrize("key", ["gpt2", "deepseek-v3"])
def test_the_full_recorded_validation_loss_is_reproduced(key, recipe):
    """The loss recorded at build time (on the whole held-out split) comes back from the shipped file."""
    m = zoo.get(key)
    assert _shipped_val_loss(m.folder, recipe) == pytest.approx(m.val_loss, abs=1e-4)


@pytest.mark.parametrize("key", ["llama3-8b", "qwen3-30b-a3b"])
def test_trained_beats_the_same_architecture_untrained_by_a_wide_margin(key, windows):
    m = zoo.get(key)
    trained = AutoModelForCausalLM.from_pretrained(str(m.folder), dtype=torch.float32, local_files_only=True).eval()
    torch.manual_seed(0)
    config = resolve(json.loads((m.folder / "config.json").read_text())).config
    untrained = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    a, b = loss(trained, windows[:8]), loss(untrained, windows[:8])
    assert b - a > 2.0, (a, b)  # nats per token: untrained sits near ln(2048) = 7.6


def test_moe_miniatures_keep_top_k_and_say_where_experts_were_cut():
    for key in catalog.keys():
        full = resolve(key).spec
        if full.moe is None:
            continue
        m = zoo.get(key)
        mini = resolve(json.loads((m.folder / "config.json").read_text())).spec.moe
        assert mini.top_k == full.moe.top_k and (mini.num_shared > 0) == (full.moe.num_shared > 0)
        assert mini.bias_corrected == full.moe.bias_corrected and mini.scoring == full.moe.scoring
        if mini.num_experts < full.moe.num_experts:
            assert any(str(full.moe.num_experts) in n for n in m.notes), key


def test_the_leaderboard_covers_every_architecture_with_its_seeds():
    board = pd.read_csv(zoo.zoo_dir() / zoo.LEADERBOARD)
    keys = {k for ks in board["keys"] for k in ks.split()}
    assert keys == set(catalog.keys())
    runs = pd.read_csv(zoo.zoo_dir() / "runs.csv")
    for _, row in board.iterrows():
        rep = row["keys"].split()[0]
        seen = runs[(runs["model"] == rep) & (runs["data"] == "corpus")]["val_loss"]
        assert row["seeds"] == len(seen) >= 1
        assert row["val_loss_mean"] == pytest.approx(seen.mean())


def test_fill_finds_the_missing_seeds_and_a_repeated_run_counts_once():
    from backend.train.zoo import latest_runs, missing_runs

    res = pd.DataFrame(
        [{"model": "a", "data": "corpus", "seed": s, "status": "finished", "val_loss": 4.0 + s} for s in (0, 1, 2)]
        + [
            {"model": "b", "data": "corpus", "seed": 0, "status": "finished", "val_loss": 5.0},
            {"model": "b", "data": "corpus", "seed": 0, "status": "finished", "val_loss": 4.5},
            {"model": "b", "data": "corpus", "seed": 1, "status": "failed", "val_loss": None},
            {"model": "b", "data": "mqar", "seed": 2, "status": "finished", "val_loss": 7.0},
        ]
    )
    latest = latest_runs(res)
    assert len(latest) == 5 and latest[latest["model"] == "b"]["val_loss"].tolist() == [4.5, 7.0]
    groups = [{"keys": ["a", "a-twin"]}, {"keys": ["b"]}]
    assert missing_runs(groups, res, (0, 1, 2)) == [
        ("a", "mqar", 0),
        ("a", "mqar", 1),
        ("a", "mqar", 2),
        ("b", "corpus", 1),
        ("b", "corpus", 2),
        ("b", "mqar", 0),
        ("b", "mqar", 1),
    ]


def test_the_shipped_leaderboard_is_what_its_runs_give():
    """leaderboard.csv equals a rebuild from runs.csv (the last finished run of each model, data and seed)."""
    from backend.train import zoo as build

    index = json.loads((zoo.zoo_dir() / zoo.INDEX).read_text())
    gs = build.groups(Recipe.from_dict(index["recipe"]), list(index["models"]))
    again = build.leaderboard(gs, pd.read_csv(zoo.zoo_dir() / "runs.csv"))
    shipped = pd.read_csv(zoo.zoo_dir() / zoo.LEADERBOARD)
    for col in ("val_loss_mean", "mqar_accuracy_mean", "seeds", "mqar_seeds", "total_params"):
        assert np.allclose(again[col].astype(float), shipped[col].astype(float), equal_nan=True), col


def test_a_zoo_build_trains_each_architectures_seeds_as_one_stack(tmp_path):
    """build() runs one training run per architecture and data, its seeds as members (one stack); the leaderboard
    counts every seed, and the index ships the first seed's checkpoint."""
    from backend.train import zoo as zoo_train
    from backend.train.recipe import preset

    r = preset("zoo", budget=100_000, layers=2, batch=8, seq_len=128, tokens=8 * 128 * 6, eval_windows=4)
    out = zoo_train.build(
        tmp_path / "zoo", r, seeds=(0, 1), keys=["llama3-8b"], parallel=1, root=tmp_path / "runs", log=lambda s: None
    )
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["data"].unique()) == ["corpus", "mqar"]
    assert len(runs) == 4 and set(runs["model"]) == {"llama3-8b"} and sorted(runs["seed"].unique()) == [0, 1]
    assert set(runs["stack_runs"]) == {2}  # the two seeds of a run shared one stack
    board = pd.read_csv(out / "leaderboard.csv")
    assert int(board.loc[0, "seeds"]) == 2 and int(board.loc[0, "mqar_seeds"]) == 2
    index = json.loads((out / "index.json").read_text())
    assert index["models"]["llama3-8b"]["folder"] == "llama3-8b"
