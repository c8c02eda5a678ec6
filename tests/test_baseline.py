"""Differences against a baseline (issue 10.3): diagrams and feature matrix, backend and page."""

import json

import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from backend.arch.architecture import arch_spec
from backend.arch.errors import ArchLabError
from backend.present import diagram, tables
from backend.present.colors import HIGHLIGHT

KEYS = ["gpt2", "deepseek-v3", "qwen3-30b-a3b"]


def _specs(keys=KEYS):
    return {k: arch_spec(k) for k in keys}


def _marked(fig) -> int:
    return sum(1 for s in fig.layout.shapes if s.line and s.line.color == HIGHLIGHT)


def _badges(fig) -> set[str]:
    return {a.text for a in fig.layout.annotations if a.text and "≠" in a.text}


def test_marks_against_a_baseline_are_pairwise():
    specs = _specs()
    m = diagram.marks(specs, "qwen3-30b-a3b")
    assert m["qwen3-30b-a3b"] == {}
    assert m["deepseek-v3"] == diagram.diff([specs["qwen3-30b-a3b"], specs["deepseek-v3"]])
    # DeepSeek and Qwen3 both use pre-RMSNorm: not marked against Qwen3, marked when GPT-2 counts too
    assert "norm_attn_pre" not in m["deepseek-v3"] and "final_norm" not in m["deepseek-v3"]
    anyway = diagram.marks(specs, None)
    assert "norm_attn_pre" in anyway["deepseek-v3"] and anyway["deepseek-v3"] == anyway["qwen3-30b-a3b"]
    assert diagram.marks({"gpt2": specs["gpt2"], "same": specs["gpt2"]}, "gpt2") == {"gpt2": {}, "same": {}}
    with pytest.raises(ArchLabError, match="not among"):
        diagram.marks(specs, "llama3-8b")


def test_comparison_figures_with_a_baseline():
    specs = _specs()
    figs = diagram.comparison_figures(specs, {}, baseline="gpt2")
    assert _marked(figs["gpt2"]) == 0 and not _badges(figs["gpt2"])
    assert "baseline" in figs["gpt2"].layout.title.text and "baseline" not in figs["qwen3-30b-a3b"].layout.title.text
    assert _badges(figs["qwen3-30b-a3b"]) == {"<b> ≠ baseline </b>"}
    anyway = diagram.comparison_figures(specs, {}, baseline=None)
    assert _badges(anyway["gpt2"]) == {"<b> ≠ differs </b>"} and _marked(anyway["gpt2"]) > 0
    # against Qwen3, DeepSeek has fewer boxes marked than "differs from any" (GPT-2 differs everywhere)
    against_qwen = diagram.comparison_figures(specs, {}, baseline="qwen3-30b-a3b")
    assert 0 < _marked(against_qwen["deepseek-v3"]) < _marked(anyway["deepseek-v3"])
    heights = {f.layout.height for f in list(figs.values()) + list(anyway.values())}
    assert len(heights) == 1  # the choice does not change the shared scale


@pytest.mark.parametrize("keys", [KEYS, ["gemma3-27b", "llama4-scout", "qwen3-next-80b-a3b", "gpt-oss-20b"]])
def test_figures_are_valid_plotly(keys):
    """Diagrams are built without plotly's validation (speed): validating them changes nothing."""
    for fig in diagram.comparison_figures(_specs(keys), {}, baseline=keys[0]).values():
        assert go.Figure(fig.to_dict()).to_dict() == fig.to_dict()


def test_feature_marks():
    df = tables.feature_matrix({"GPT-2": "gpt2", "DS": "deepseek-v3", "Qwen": "qwen3-30b-a3b"})
    m = tables.feature_marks(df, "Qwen")
    assert list(m.columns) == ["GPT-2", "DS", "Qwen"] and not m["Qwen"].any()
    assert not m.loc["Norm type", "DS"] and m.loc["Norm type", "GPT-2"]  # RMSNorm like Qwen3; LayerNorm not
    assert m.loc["Attention", "DS"] and m.loc["Decoder layers", "DS"]
    anyway = tables.feature_marks(df, None)
    assert anyway.loc["Norm type"].all() and (anyway.any(axis=1) == df["differs"]).all()
    assert (m.any(axis=1) == df["differs"]).all()  # a row differs from the baseline iff the models disagree
    with pytest.raises(ArchLabError, match="not among"):
        tables.feature_marks(df, "Llama")


# ----------------------------------------------------------------- the page (AppTest)


def _app(**query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def _page_marks(at) -> list[int]:
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [sum(1 for s in f["layout"]["shapes"] if s.get("line", {}).get("color") == HIGHLIGHT) for f in figs]


def test_page_baseline_defaults_to_the_first_model_and_goes_in_the_url():
    at = _app()
    assert not at.exception and not at.error
    box = at.selectbox(key="_w_base")
    assert box.label == "Compare against" and box.value == "gpt2"
    assert box.options == [
        "GPT-2 (124M)",
        "DeepSeek V3 / R1",
        "Qwen3 30B-A3B",
        "any of them (what differs between any)",
    ]
    assert "base" not in at.query_params  # the default stays out of the link
    titles, marks = _titles(at), _page_marks(at)
    assert "baseline" in titles[0] and marks[0] == 0 and all(m > 0 for m in marks[1:])
    matrix = at.dataframe[0].value
    assert "Norm type" in matrix.index and matrix.loc["Norm type", "≠"] == "≠"

    box.set_value("qwen3-30b-a3b").run()
    assert not at.exception and at.query_params["base"] == "qwen3-30b-a3b"
    titles, against_qwen = _titles(at), _page_marks(at)
    assert "baseline" in titles[2] and against_qwen[2] == 0 and against_qwen[0] > 0
    at.selectbox(key="_w_base").set_value("any").run()
    assert at.query_params["base"] == "any"
    anyway = _page_marks(at)
    assert all(m > 0 for m in anyway) and anyway[1] > against_qwen[1]  # DeepSeek: more marked than vs Qwen3
    assert not any("baseline" in t for t in _titles(at))
    # the feature matrix follows the same choice
    at.toggle[0].set_value(True).run()
    shown = at.dataframe[0].value
    assert "Norm type" in shown.index and "Norm placement" not in shown.index


def test_page_baseline_from_the_url_and_bad_values():
    at = _app(models="gpt2,deepseek-v3,qwen3-30b-a3b", base="deepseek-v3")
    assert at.selectbox(key="_w_base").value == "deepseek-v3" and "baseline" in _titles(at)[1]
    at = _app(models="gpt2,deepseek-v3", base="llama3-8b")  # not among the selected models
    assert not at.exception and at.selectbox(key="_w_base").value == "gpt2"
    assert any("?base=llama3" in w.value and "not a valid value" in w.value for w in at.warning)
    # the baseline leaves the selection: back to the (new) first model, no error
    at = _app(models="gpt2,deepseek-v3,qwen3-30b-a3b", base="deepseek-v3")
    at.sidebar.multiselect[0].set_value(["gpt2", "qwen3-30b-a3b"]).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="_w_base").value == "gpt2" and "base" not in at.query_params
    # one model: nothing to compare, no choice shown
    at.sidebar.multiselect[0].set_value(["gpt2"]).run()
    assert not at.exception and not [s for s in at.selectbox if s.key == "_w_base"]
