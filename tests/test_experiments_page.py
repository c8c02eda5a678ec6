"""The Experiments page through AppTest: the setup with its sized preview, a finished run re-attached by its
link (from the run folder), a bad link, and the zoo's leaderboard."""

import pytest
from streamlit.testing.v1 import AppTest

from backend.train.recipe import RunSpec, preset
from backend.train.runner import TrainingRun

TIMEOUT = 180


def page(**query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    return at.switch_page("views/experiments.py").run()


def test_setup_shows_the_miniatures_the_budget_gives():
    at = page(models="llama3-8b,qwen3-30b-a3b")
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Experiments"
    preview = at.dataframe[0].value
    assert list(preview["model"]) == ["Llama 3 8B", "Qwen3 30B-A3B"]
    assert (preview["off target (%)"].abs() <= 5).all()
    assert preview.loc[1, "experts (kept / real)"] == "128 / 128"
    assert any(b.label == "Train" for b in at.button)
    board = [d.value for d in at.dataframe if "architecture" in d.value.columns]
    assert board and len(board[0]) == 20 and board[0]["rank"].tolist() == list(range(1, 21))


def test_an_impossible_budget_is_one_line_per_model():
    at = page(models="llama3-8b,qwen3-235b-a22b")
    at.text_input(key="ex_budget_tiny").set_value("20k").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and all("cannot meet" in e and "\n" not in e for e in errors)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("runs")
    os.environ["ARCHLAB_RUNS_DIR"] = str(root)
    r = TrainingRun(
        RunSpec(
            ("llama3-8b", "qwen3-30b-a3b"),
            preset(
                "tiny", budget=100_000, layers=2, batch=8, seq_len=64, tokens=8 * 64 * 12, eval_every=6, eval_windows=4
            ),
            "cpu",
        ),
        root=root,
    ).start()
    r.join(600)
    yield r
    os.environ.pop("ARCHLAB_RUNS_DIR")


def test_a_finished_run_reattaches_by_its_link_from_disk(finished_run):
    at = page(run=finished_run.id)
    assert not at.exception, [e.value for e in at.exception]
    tables = {tuple(d.value.columns)[:2]: d.value for d in at.dataframe}
    results = next(
        v
        for k, v in tables.items()
        if "validation loss" in v.columns and "status" in v.columns and "batch stream SHA-256" in v.columns
    )
    assert set(results["model"]) == {"Llama 3 8B", "Qwen3 30B-A3B"}
    hashes = next(v for v in tables.values() if "SHA-256 of the batch stream" in v.columns)
    assert hashes["same as the others"].all() and hashes["SHA-256 of the batch stream"].nunique() == 1
    assert len(at.get("plotly_chart")) >= 2  # learning curves and routers
    assert at.query_params["run"] == finished_run.id


def test_a_bad_run_link_is_one_line():
    at = page(run="A" * 24)
    assert not at.exception
    assert len(at.error) == 1 and "not valid or has expired" in at.error[0].value
    assert "run" not in at.query_params
