"""Playground and Routing pages through AppTest, and the backend helpers they lay out."""

import base64
import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from backend.arch.errors import ArchLabError
from backend.present import charts, playground
from views._state import DEFAULT_MODELS

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
    mode = at.selectbox(key="_w_mode")
    assert mode.value == "trained"  # the trained miniatures are the default
    assert mode.options[:4] == [
        "trained miniature",
        "tiny miniature, random weights",
        "small miniature, random weights",
        "medium miniature, random weights",
    ]
    assert {"full size, random", "full width, fewer layers"} <= set(mode.options)
    assert at.selectbox(key="_w_device").options[:2] == ["auto", "CPU"]
    assert "trained miniature" in at.caption[0].value and "gibberish by design" in at.caption[0].value
    assert "Generate" in at.info[-1].value
    assert not [i for i in at.info if "No trained miniature" in i.value]  # the default models are all shipped
    assert "mode" not in at.query_params  # the default stays out of the URL


def _corpus_bigrams_share(text: str) -> float:
    """Share of the consecutive word pairs of ``text`` (letters only, lower case) that occur as consecutive words
    in the shipped corpus's training text: real words in corpus order, not just corpus words (a random-weight
    miniature repeats single words: "law law law")."""
    import re

    words = re.findall(r"[a-z]+", text.lower())
    pairs = list(zip(words, words[1:]))
    return sum(p in _corpus_bigrams() for p in pairs) / max(1, len(pairs))


_BIGRAMS: set = set()


def _corpus_bigrams() -> set:
    import re

    from backend.train import corpus

    if not _BIGRAMS:
        words = re.findall(r"[a-z]+", corpus.split().train.lower())
        _BIGRAMS.update(zip(words, words[1:]))
    return _BIGRAMS


def test_the_default_models_are_the_trained_ones_and_write_corpus_english():
    """A fresh session, the default selection, Generate: every column runs the shipped trained miniature of its
    model (the zoo in assets/zoo, loaded by the runtime's trained mode) and writes words of the corpus; the
    same architectures' random-weight miniatures do not."""
    from backend.live import runtime, zoo

    at = page("views/playground.py", tokens="40")
    generate(at, "And the king said unto")
    no_errors(at)
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    names = [_state_label(k) for k in DEFAULT_MODELS]
    assert list(stats["model"]) == [f"{n} (trained miniature)" for n in names]
    assert list(stats["reason"]) == ["length"] * len(names)
    for key in DEFAULT_MODELS:
        lm = runtime.load(runtime.ModelRequest(key, mode="trained"))
        assert lm.request.mode == "trained" and zoo.get(key).folder.name in lm.model.name_or_path
    texts = [c.value for c in at.code]
    assert len(texts) == len(names)
    trained = [_corpus_bigrams_share(t) for t in texts]
    at.selectbox(key="_w_mode").set_value("small").run()
    generate(at, "And the king said unto")
    random_ = [_corpus_bigrams_share(c.value) for c in at.code]
    assert min(trained) >= 0.6 and max(random_) < min(trained), (trained, random_, texts)


def _state_label(key: str) -> str:
    from backend.arch import catalog

    return catalog.get(key).name


def test_a_model_without_a_trained_miniature_falls_back_in_one_line():
    from backend.arch import catalog

    cfg = dict(catalog.raw_config("qwen3-0.6b"), num_hidden_layers=2, layer_types=["full_attention"] * 2)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["tokens"] = "3"
    at.session_state["custom_configs"] = {"custom:my*model": cfg}  # as the sidebar's upload leaves it
    at.session_state["models"] = ["gpt2", "custom:my*model"]
    at.run()
    at.switch_page("views/playground.py").run()
    notes = [i.value for i in at.info if "No trained miniature" in i.value]
    assert len(notes) == 1 and "\n" not in notes[0] and "my\\*model \\(uploaded\\)" in notes[0], notes
    assert "random-weight small miniature" in notes[0]
    generate(at)
    no_errors(at)
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    assert stats["model"][0] == "GPT-2 (124M) (trained miniature)"
    assert stats["model"][1].endswith("(miniature, small)") and list(stats["reason"]) == ["length", "length"]


def _fake_run(root, run_id: str, key: str = "qwen3-0.6b") -> None:
    """A training run folder holding one checkpoint, as the trainer writes it (weights, tokenizer, training.json)."""
    import json

    from backend.live import runtime
    from backend.live.tokenizer import load_offline

    folder = root / run_id / "models" / key
    lm = runtime.load(runtime.ModelRequest(key, mode="miniature", size="tiny", device="cpu"))
    lm.model.save_pretrained(str(folder))
    load_offline().save_pretrained(str(folder))
    (folder / "training.json").write_text(json.dumps({"key": key, "label": "Qwen3 0.6B", "val_loss": 5.0}))


def test_checkpoints_of_this_sessions_training_runs_are_offered(tmp_path, monkeypatch):
    from backend.live.runs import new_id

    monkeypatch.setenv("ARCHLAB_RUNS_DIR", str(tmp_path))
    mine, other = new_id(), new_id()
    _fake_run(tmp_path, mine)
    _fake_run(tmp_path, other)
    at = page("views/playground.py", models="gpt2", tokens="3")
    assert not [o for o in at.selectbox(key="_w_mode").options if "run" in o]  # no run of this session yet
    at.session_state["ex_run"] = mine  # what the Experiments page keeps for the run it started
    at.run()
    mode = at.selectbox(key="_w_mode")
    assert [o for o in mode.options if "run" in o] == [f"trained miniatures (run {mine[:6]}…)"]  # not the other run
    mode.set_value(f"run:{mine}").run()
    assert at.query_params["mode"] == f"run:{mine}"
    assert any("whatever the sidebar selects" in c.value for c in at.caption)
    generate(at)
    no_errors(at)
    stats = next(d.value for d in at.dataframe if "TTFT (ms)" in d.value.columns)
    assert list(stats["model"]) == [f"Qwen3 0.6B (trained miniature, run {mine[:6]}…)"]
    assert list(stats["reason"]) == ["length"]
    at.session_state["ex_run"] = other  # a second run: both are offered now
    at.run()
    assert len([o for o in at.selectbox(key="_w_mode").options if "run" in o]) == 2
    # a link naming a run attaches to it in a new session; a bad one is one line
    linked = page("views/playground.py", models="gpt2", mode=f"run:{other}")
    assert linked.selectbox(key="_w_mode").value == f"run:{other}"
    bad = page("views/playground.py", models="gpt2", mode="run:nope")
    assert bad.selectbox(key="_w_mode").value == "trained" and not bad.exception
    assert [w.value for w in bad.warning if "mode" in w.value] and all("\n" not in w.value for w in bad.warning)


def test_mode_url_state_and_labels():
    at = page("views/playground.py", models="gpt2", mode="small")
    assert at.selectbox(key="_w_mode").value == "small" and at.query_params["mode"] == "small"
    assert playground.mode_label("small") == "small miniature, random weights"
    assert playground.mode_label("run:abcdefghijklmnop") == "trained miniatures (run abcdef…)"
    assert not [i for i in at.info if "No trained miniature" in i.value]  # only said in trained mode


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


def test_routing_page_shows_what_the_trained_routers_learned(monkeypatch):
    """The Routing page's second view, against the shipped zoo: a zoo MoE miniature beside its untrained twin
    (specialisation chart and table, the tokens each expert takes, where frequent tokens go), then the whole
    zoo's specialisation and load balance by router kind; every chart and table with its downloads.
    The page is routed over 16 of the usual 64 corpus windows: its wiring is what is tested here (the measure
    itself: test_specialisation.py), and 18 models' routing of 16k tokens took half a minute."""
    from backend.present import specialisation as sp

    short = sp.routing_text(16)
    monkeypatch.setattr(sp, "routing_text", lambda *a, **k: short)
    models = sp.zoo_moe()
    assert models, "the shipped zoo has no mixture-of-experts miniature"
    at = page("views/routing.py", rtview="learned")
    no_errors(at)
    assert at.selectbox(key="_w_rtzoo").value == models[0].key
    figs = figures(at)
    spec = next(f for t, f in figs.items() if "specialisation per MoE layer" in t)
    assert [d["name"] for d in spec["data"]] == ["trained", "untrained (its initial weights)"]
    assert any(t.startswith("Where the 24 most frequent tokens go") for t in figs)
    tokens = next(d.value for d in at.dataframe if "tokens it takes most (count, % of that token)" in d.value.columns)
    assert list(tokens["expert"]) == list(range(models[0].num_experts))
    assert tokens["load (%)"].sum() == pytest.approx(100)
    assert all(
        "×" in t for t, n in zip(tokens["tokens it takes most (count, % of that token)"], tokens["selections"]) if n
    )
    if any(b.key == "rt_zoo_all" for b in at.button):  # the whole zoo not routed yet on this machine: on request
        assert len(figs) == 2
        at.button(key="rt_zoo_all").click().run()
        no_errors(at)
        figs = figures(at)
    assert len(figs) == 4 and any("by how the routers were balanced" in t for t in figs)
    summary = next(d.value for d in at.dataframe if "specialisation, trained" in d.value.columns)
    assert len(summary) == len(models)
    kinds = next(d.value for d in at.dataframe if "normalized entropy" in d.value.columns)
    assert set(kinds["router"]) == {m.router for m in models} and set(kinds["weights"]) == {"trained", "untrained"}
    dl = labels(at, "download_button")
    assert dl.count("PNG") == len(figs) and dl.count("CSV") == 4
    at.selectbox(key="_w_rtzoo").set_value(models[-1].key).run()
    no_errors(at)
    assert at.query_params.get("rtzoo") == (None if models[-1].key == models[0].key else models[-1].key)


def test_routing_learned_view_with_a_bad_url_value_is_one_line():
    at = page("views/routing.py", rtview="learned", rtzoo="gpt2")  # a dense model: not a choice there
    assert not at.exception and not at.error
    assert [w.value for w in at.warning if "rtzoo" in w.value]


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


def test_trained_requests_and_their_gpu_share():
    """Trained mode asks the runtime for the shipped miniature; a model without one gets the random small
    miniature; the GPU bytes counted against a visitor are the trained miniature's, not the full model's."""
    from backend.arch import catalog
    from backend.live import runtime, zoo

    custom = catalog.raw_config("gpt2")
    runs = playground.requests_for([("gpt2", "gpt2"), ("custom:x", custom)], "trained", "cpu")
    (_, _, a), (_, _, b) = runs
    assert a.mode == "trained" and a.source == "gpt2" and b.mode == "miniature" and b.size == playground.FALLBACK_SIZE
    assert playground.fallback_note([("gpt2", "gpt2"), ("custom:x", custom)], ["GPT-2", "x"]).startswith(
        "No trained miniature is shipped for x:"
    )
    assert playground.fallback_note([("gpt2", "gpt2")], ["GPT-2"]) == ""
    hw = {"cuda": True, "gpus": [{"index": 0, "name": "fake", "total_gib": 80.0, "free_gib": 80.0}], "cpu_threads": 2}
    req = runtime.ModelRequest("deepseek-v3", mode="trained", device="cuda")
    need = playground.gpu_bytes([req], hw)
    zoo_bytes = (zoo.get("deepseek-v3").folder / "model.safetensors").stat().st_size
    assert 0 < need < 64 * zoo_bytes + 2**30  # megabytes of a miniature (+ KV allowance), not 1.3 TB
    with pytest.raises(ArchLabError, match="no trained checkpoint"):
        playground.requests_for([("gpt2", "gpt2")], "run:" + "A" * 24, "cpu")


def test_heatmap_colours_the_top1_expert_and_hovers_all_k():
    experts = pd.DataFrame(
        [
            (0, 5, 3, 0, 2, 0.7),
            (0, 5, 3, 1, 1, 0.3),
            (1, 6, 3, 0, 0, 0.6),
            (1, 6, 3, 1, 3, 0.4),
            (0, 5, 5, 1, 0, 0.1),
            (0, 5, 5, 0, 1, 0.9),
        ],
        columns=["position", "token_id", "layer", "rank", "expert", "weight"],
    )
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
    assert list(stats["model"]) == [
        "GPT-2 (124M) [3 of 12 layers] (full width, random)",
        "Qwen3 0.6B [3 of 28 layers] (full width, random)",
    ]
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
