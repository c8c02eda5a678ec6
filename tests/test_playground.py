"""Playground and Routing pages through AppTest, and the backend helpers they lay out."""
import base64
import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from backend.arch.errors import ArchLabError
from backend.present import charts, playground

TIMEOUT = 120


def page(path: str, **query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    return at.switch_page(path).run()


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def figures(at: AppTest) -> dict[str, dict]:
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {f["layout"]["title"]["text"]: f for f in figs}


def array(v) -> np.ndarray:
    """A plotly JSON array (a list, or {"dtype", "bdata", "shape"})."""
    if isinstance(v, dict):
        shape = tuple(int(n) for n in str(v["shape"]).split(","))
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).reshape(shape)
    return np.asarray(v, dtype=float)


def labels(at: AppTest, kind: str) -> list[str]:
    return [b.proto.label for b in at.get(kind)]


def generate(at: AppTest, prompt: str = "Hello there, experts") -> AppTest:
    at.text_area(key="_w_pg_prompt").input(prompt).run()
    return at.button[0].click().run()  # Generate; the script follows the run to its end


@pytest.fixture(scope="module")
def moe_run() -> AppTest:
    at = page("views/playground.py", models="deepseek-v3,gpt2", tokens="8", mode="tiny")
    return generate(at)


def test_playground_renders_with_default_selection():
    at = page("views/playground.py")
    no_errors(at)
    assert at.title[0].value == "Playground"
    assert labels(at, "button")[:2] == ["Generate", "Stop"]
    assert at.button[1].proto.disabled  # nothing to stop yet
    assert at.selectbox(key="_w_mode").value == "small"  # the runtime default preset
    assert at.selectbox(key="_w_device").options[:2] == ["auto", "CPU"]
    assert "gibberish by design" in at.caption[0].value
    assert "Generate" in at.info[0].value


def test_generate_streams_both_models_and_lists_stats(moe_run):
    at = moe_run
    no_errors(at)
    texts = [c.value for c in at.code]
    assert len(texts) == 2 and all(t.strip() for t in texts)
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    assert list(stats["model"]) == ["DeepSeek V3 / R1 (miniature, tiny)", "GPT-2 (124M) (miniature, tiny)"]
    assert list(stats["new tokens"]) == [8, 8] and list(stats["reason"]) == ["length", "length"]
    assert (stats["TTFT (ms)"] > 0).all() and (stats["tok/s"] > 0).all()
    mem = next(d.value for d in at.dataframe if "predicted (MiB)" in d.value.columns)
    assert len(mem) == 2 and (mem["measured (MiB)"] == mem["predicted (MiB)"]).all()
    place = next(d.value for d in at.dataframe if "misplaced parameters" in d.value.columns)
    assert list(place["device"]) == ["cpu", "cpu"] and (place["misplaced parameters"] == 0).all()
    assert (place["device map (MiB)"] == place["parameters there (MiB)"]).all()
    assert labels(at, "download_button").count("CSV") == 3
    assert at.text_area(key="_w_pg_prompt").value == "Hello there, experts"
    at.switch_page("views/architectures.py").run()
    at.switch_page("views/playground.py").run()  # the prompt and the finished run survive a page switch
    assert at.text_area(key="_w_pg_prompt").value == "Hello there, experts"
    assert [c.value for c in at.code] == texts


def test_empty_prompt_shows_an_error_not_a_traceback():
    at = page("views/playground.py", models="gpt2", tokens="4")
    generate(at, prompt="   ")
    assert not at.exception
    assert any("prompt is empty" in e.value for e in at.error)


def test_a_failing_model_stays_in_its_column():
    at = page("views/playground.py", models="deepseek-v3,gpt2", mode="full", device="cpu", tokens="2")
    generate(at)
    assert not at.exception
    # full-size DeepSeek V3 has ~2.5 TB of fp32 weights: runtime refuses it, GPT-2 runs anyway
    assert len(at.error) == 1 and "needs" in at.error[0].value and "GiB" in at.error[0].value
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    assert stats["reason"].iloc[0].startswith("failed: needs") and stats["new tokens"].iloc[1] >= 1


def test_routing_page_after_a_moe_run(moe_run):
    at = moe_run.switch_page("views/routing.py").run()
    no_errors(at)
    assert any("GPT\\-2" in i.value and "no router" in i.value for i in at.info)  # labels as literal Markdown
    figs = figures(at)
    heat = next(f for t, f in figs.items() if "top-1 expert of each token" in t)
    trace = heat["data"][0]
    assert trace["type"] == "heatmap"
    assert heat["layout"]["xaxis"]["title"]["text"].startswith("token")
    assert heat["layout"]["yaxis"]["title"]["text"] == "MoE layer"
    z = array(trace["z"])
    assert z.shape[0] == len(trace["y"]) >= 1 and z.shape[1] >= 8 + 1  # prompt tokens + 7 fed-back tokens
    assert ((z >= 0) & (z < 4)).all()  # tiny DeepSeek miniature: 4 routed experts, every cell routed
    assert "expert" in trace["customdata"][0][0] and "weight" in trace["customdata"][0][0]
    assert any(t.startswith("Expert load, layer") for t in figs)
    assert any(t.startswith("Load balance") for t in figs)
    assert any(t.startswith("Experts chosen together") for t in figs)
    assert any("shared vs routed" in t for t in figs)
    dl = labels(at, "download_button")
    assert dl.count("PNG") == len(figs) and dl.count("HTML") == len(figs) and dl.count("CSV") == 2


def test_routing_page_dense_only_selection():
    at = page("views/routing.py", models="gpt2")
    no_errors(at)
    assert any("dense model" in i.value and "no router" in i.value for i in at.info)
    assert not at.get("plotly_chart")


# ----------------------------------------------------------------- backend helpers

def test_parse_stop_and_options():
    assert playground.parse_stop(r"###, \n,a\,b") == ("###", "\n", "a,b")
    assert playground.parse_stop("") == ()
    assert playground.device_options({"gpus": []}) == ["auto", "cpu"]
    assert playground.device_options({"gpus": [{}, {}]}) == ["auto", "cpu", "cuda", "multi-gpu"]
    assert "pretrained" not in playground.mode_options("") and "pretrained" in playground.mode_options("/x")
    with pytest.raises(ArchLabError, match="checkpoint folder"):
        playground.requests_for([("gpt2", "gpt2")], "pretrained", "auto")
    runs = playground.requests_for([(k, k) for k in ("a", "b", "c", "d", "e")], "small", "cpu")
    assert len(runs) == playground.MAX_COLUMNS and runs[0][2].size == "small" and runs[0][2].device == "cpu"


def test_heatmap_colours_the_top1_expert_and_hovers_all_k():
    experts = pd.DataFrame([(0, 5, 3, 0, 2, 0.7), (0, 5, 3, 1, 1, 0.3), (1, 6, 3, 0, 0, 0.6), (1, 6, 3, 1, 3, 0.4),
                            (0, 5, 5, 1, 0, 0.1), (0, 5, 5, 0, 1, 0.9)],
                           columns=["position", "token_id", "layer", "rank", "expert", "weight"])
    fig = charts.routing_heatmap(experts, ["a", "b"], [3, 5], 4, 1, "t")
    z = fig.data[0].z
    assert z[0][0] == 2 and z[0][1] == 0 and z[1][0] == 1  # rank 0 wins, whatever the row order
    assert fig.data[0].customdata[0][0] == "expert 2: weight 0.700<br>expert 1: weight 0.300"
    assert pd.isna(z[1][1])  # layer 5 did not route position 1
    grid = charts.token_expert_grid(experts, ["a", "b"], 3, 4, 1, "t", per_row=2)
    assert list(grid.data[0].z[0]) == [2, 0] and grid.data[0].text[0] == ["a", "b"]


def test_token_label_makes_whitespace_visible():
    assert playground.token_label(" the") == "␣the"
    assert playground.token_label("\n") == "⏎"
    assert playground.token_label("x" * 20, width=5) == "xxxx…"


def test_fewer_layers_requests():
    runs = playground.requests_for([("deepseek-v3", "deepseek-v3"), ("gpt2", "gpt2")], "layers", "cpu", layers=5)
    (_, _, ds), (_, _, g2) = runs
    assert ds.mode == g2.mode == "full" and ds.source["num_hidden_layers"] == 5 and g2.source["n_layer"] == 5
    assert ds.source["_name_or_path"] == "DeepSeek V3 / R1 [5 of 61 layers]"
    whole = playground.requests_for([("gpt2", "gpt2")], "layers", "cpu", layers=500)[0][2]
    assert whole.source["n_layer"] == 12 and playground.full_depth("deepseek-v3") == 61
    for bad in (1, 0, True, "4"):
        with pytest.raises(ArchLabError, match="at least 2 layers"):
            playground.requests_for([("gpt2", "gpt2")], "layers", "cpu", layers=bad)


def test_fewer_layers_mode_extrapolates_to_full_depth():
    at = page("views/playground.py", models="gpt2,qwen3-0.6b", mode="layers", layers="3", device="cpu", tokens="4")
    assert at.number_input(key="_w_layers").value == 3
    generate(at)
    no_errors(at)
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    assert list(stats["model"]) == ["GPT-2 (124M) [3 of 12 layers] (full width, random)",
                                    "Qwen3 0.6B [3 of 28 layers] (full width, random)"]
    depth = next(d.value for d in at.dataframe if "per layer (ms)" in d.value.columns)
    assert list(depth["layers run"]) == [3, 3] and list(depth["of"]) == [12, 28]
    assert (depth["step at k (ms)"] > 0).all() and (depth["step at k − 1 (ms)"] > 0).all()
    for _, row in depth.iterrows():  # an extrapolation, or the reason there is none (timing noise)
        extrapolated = row["tok/s at full depth (extrapolated)"]
        if row["per layer (ms)"] > 0:
            step_ms, per_ms, k, n = row["step at k (ms)"], row["per layer (ms)"], row["layers run"], row["of"]
            assert extrapolated == pytest.approx(1000 / (step_ms + (n - k) * per_ms)) and "assumed" in row["how"]
        else:
            assert pd.isna(extrapolated) and "noise" in row["how"]
    shown = " ".join(m.value for m in at.markdown)
    if (depth["per layer (ms)"] > 0).any():
        assert "(extrapolated)" in shown
