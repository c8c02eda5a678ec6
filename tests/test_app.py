"""The dashboard through Streamlit's AppTest: pages render, the picker drives them, URLs restore state."""

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from backend.arch import catalog

TIMEOUT = 120


def app(**query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def shown(markdown: str) -> str:
    """Markdown source as it reads on the page (visitors' text is backslash-escaped)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def buttons(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


def test_default_architectures_page():
    at = app()
    no_errors(at)
    assert at.title[0].value == "Architectures"
    assert at.sidebar.multiselect[0].value == ["gpt2", "deepseek-v3", "qwen3-30b-a3b"]
    figs = charts(at)
    assert len(figs) == 3
    titles = [f["layout"]["title"]["text"] for f in figs]
    assert any("GPT-2" in t for t in titles) and any("DeepSeek" in t for t in titles)
    assert len({f["layout"]["height"] for f in figs}) == 1  # same scale
    assert buttons(at).count("PNG") == 3 and buttons(at).count("HTML") == 3 and "CSV" in buttons(at)
    matrix = at.dataframe[0].value
    assert {"GPT-2 (124M)", "DeepSeek V3 / R1", "≠"} <= set(matrix.columns)
    assert at.query_params["models"] == "gpt2,deepseek-v3,qwen3-30b-a3b"


def test_selecting_models_changes_matrix_and_url():
    at = app()
    at.sidebar.multiselect[0].set_value(["gpt2", "gpt2-xl"]).run()
    no_errors(at)
    matrix = at.dataframe[0].value
    assert list(matrix.columns)[1:] == ["GPT-2 (124M)", "GPT-2 XL (1.5B)"]
    assert matrix.loc["Decoder layers", "≠"] == "≠" and matrix.loc["Norm type", "≠"] == ""
    assert len(charts(at)) == 2
    assert at.query_params["models"] == "gpt2,gpt2-xl"
    at.toggle[0].set_value(True).run()  # only rows that differ
    assert "Norm type" not in at.dataframe[0].value.index


def test_no_model_selected_explains_what_to_do():
    at = app()
    at.sidebar.multiselect[0].set_value([]).run()
    no_errors(at)
    assert "Pick one or more models" in at.info[0].value


def test_url_restores_selection_and_warns_on_unknown_keys():
    at = app(models="olmo2-7b,nonsense,gemma3-27b")
    assert not at.exception
    assert at.sidebar.multiselect[0].value == ["olmo2-7b", "gemma3-27b"]
    assert "nonsense" in at.sidebar.warning[0].value
    assert len(charts(at)) == 2


def test_bad_upload_shows_error_and_keeps_selection():
    at = app()
    at.sidebar.file_uploader[0].upload("broken.json", b"{not json", "application/json").run()
    assert not at.exception
    assert any("broken.json" in shown(e.value) and "not valid JSON" in e.value for e in at.sidebar.error)
    assert at.sidebar.multiselect[0].value == ["gpt2", "deepseek-v3", "qwen3-30b-a3b"]
    at.sidebar.file_uploader[0].upload(
        "huge.json", json.dumps({"model_type": "llama", "hidden_size": 10**9}).encode(), "application/json"
    ).run()
    assert any("beyond any real model" in e.value for e in at.sidebar.error)


def test_good_upload_adds_a_custom_model():
    cfg = catalog.raw_config("qwen3-0.6b")
    at = app()
    at.sidebar.file_uploader[0].upload("my-qwen.json", json.dumps(cfg).encode(), "application/json").run()
    no_errors(at)
    assert at.sidebar.multiselect[0].value[-1] == "custom:my-qwen"
    assert "my-qwen (uploaded)" in at.dataframe[0].value.columns
    assert at.query_params["models"] == "gpt2,deepseek-v3,qwen3-30b-a3b"  # uploads are not in the URL


def test_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_MODEL_DIRS", str(tmp_path))  # folders are taken under the allowed roots only
    at = app()
    at.sidebar.text_input[0].input(str(tmp_path)).run()
    assert any("no config.json" in shown(e.value) for e in at.sidebar.error)
    assert at.session_state["checkpoint_path"] == ""
    (tmp_path / "config.json").write_text(json.dumps(catalog.raw_config("qwen3-0.6b")))
    at.sidebar.text_input[0].input(str(tmp_path) + " ").run()
    no_errors(at)
    assert at.session_state["checkpoint_path"] == str(tmp_path.resolve())
    assert at.sidebar.multiselect[0].value[-1] == f"local:{tmp_path.resolve()}"


def test_parameters_page(tmp_path, monkeypatch):
    from backend.arch import train_memory

    monkeypatch.setattr(train_memory, "MEASURED_FILE", tmp_path / "absent.json")  # whatever bench/results holds
    at = app(models="gpt2,gemma3-27b", ctx="4096")
    at.switch_page("views/parameters.py").run()
    no_errors(at)
    assert at.title[0].value == "Parameters & Memory"
    figs = charts(at)
    assert len(figs) == 9  # 5 + speed (decode, prefill, per GPU) + training; no measurement of these two models
    axes = " ".join(f["layout"].get("yaxis", {}).get("title", {}).get("text", "") for f in figs)
    assert "GiB" in axes and "billions" in axes
    kv = next(f for f in figs if "KV cache vs" in f["layout"]["title"]["text"])
    assert kv["layout"]["xaxis"]["title"]["text"] == "context length (tokens)"
    assert at.number_input(key="_w_ctx").value == 4096
    kv_table = next(d.value for d in at.dataframe if "Total (GiB)" in d.value.columns)
    assert kv_table.loc["GPT-2 (124M)", "Total (GiB)"] == pytest.approx(12 * 12 * 64 * 4 * 4096 / 2**30)
    assert buttons(at).count("CSV") == 7 and buttons(at).count("SVG") == 9  # + speed, GPU table, training
    at.number_input(key="_w_ctx").set_value(8192).run()
    assert at.query_params["ctx"] == "8192"
    at.number_input(key="_w_gpus").set_value(1).run()
    at.number_input(key="_w_gpugib").set_value(40.0).run()
    no_errors(at)
    assert at.query_params["gpus"] == "1" and at.query_params["gpugib"] == "40.0"
    plan = next(d.value for d in at.dataframe if "weights_gib" in d.value.columns)
    gemma = plan[plan["model"] == "Gemma 3 27B (text)"]
    assert set(gemma["device"]) == {"GPU 0", "does not fit (disk)"}  # 50 GiB of bf16 weights > 40 GiB
    assert not gemma["fits_on_gpus"].any()


def test_parameters_settings_from_url_and_bad_values():
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params.update({"models": "qwen3-30b-a3b", "ctx": "-5", "kvdtype": "fp8", "logx": "0", "gpugib": "nan"})
    at.run()
    at.switch_page("views/parameters.py").run()
    assert not at.exception
    assert at.number_input(key="_w_ctx").value == 32768  # default, with a warning
    assert any("ctx=-5" in shown(w.value) for w in at.warning) and any(
        "gpugib=nan" in shown(w.value) for w in at.warning
    )
    assert at.number_input(key="_w_gpugib").value == 80.0
    assert at.selectbox(key="_w_kvdtype").value == "fp8" and at.toggle(key="_w_logx").value is False


def test_a_warm_rerun_builds_nothing(monkeypatch):
    """A rerun (any widget change) reuses every config and spec built before: no transformers config, no meta
    model. What reruns cost in seconds is bench/ui.py's business."""
    from backend.arch import configs, meta
    from backend.present import warmup

    at = app()
    at.run()
    at.switch_page("views/parameters.py").run()
    at.switch_page("views/architectures.py").run()  # both pages drawn once
    assert warmup.join(120)  # the server's background warm-up builds models too: not what is measured here
    built = []
    monkeypatch.setattr(configs, "build_config", lambda *a: built.append("config"))
    monkeypatch.setattr(meta, "build_meta_model", lambda *a: built.append("model"))
    at.run()
    assert not at.exception and not built, "Architectures"
    at.switch_page("views/parameters.py").run()
    at.run()
    assert not at.exception and not built, "Parameters & Memory"


def _badges(fig: dict) -> int:
    return sum("≠ baseline" in a.get("text", "") for a in fig["layout"].get("annotations", []))


def test_adding_a_variant_draws_it_beside_its_base_with_the_change_marked():
    at = app(models="olmo2-7b")
    no_errors(at)
    at.selectbox(key="variant_base").set_value("olmo2-7b")
    at.selectbox(key="variant_axis").set_value("qk_norm").run()
    assert any("has qk_norm=on" in c.value for c in at.caption)  # the model's own value
    at.selectbox(key="variant_value_qk_norm").set_value("off")
    next(b for b in at.button if b.label == "Add variant").click().run()
    no_errors(at)
    name = "variant:OLMo 2 7B [qk_norm=off]"
    assert at.sidebar.multiselect[0].value == ["olmo2-7b", name]
    assert at.selectbox(key="_w_base").value == "olmo2-7b"  # the base is the baseline
    assert at.query_params["models"] == "olmo2-7b"  # a visitor's variant is not mirrored into links
    base_fig, var_fig = charts(at)
    assert _badges(base_fig) == 0 and _badges(var_fig) == 1  # exactly the attention box: its QK-Norm line
    text = json.dumps(var_fig)
    assert "QK-Norm" not in text and "QK-Norm" in json.dumps(base_fig)
    assert any("Variant of" in m.value and "qk_norm=off" in shown(m.value) for m in at.markdown)
    assert any("qk_norm_off" in c.value for c in at.caption)  # its patch is listed
    # a free-form field, and one that the class cannot build: one line each, the selection kept
    at.selectbox(key="variant_axis").set_value(_state_free()).run()
    at.text_input(key=f"variant_value_{_state_free()}").set_value("rms_norm_eps=1e-5")
    next(b for b in at.button if b.label == "Add variant").click().run()
    no_errors(at)
    assert at.sidebar.multiselect[0].value[-1] == "variant:OLMo 2 7B [rms_norm_eps=1e-05]"
    at.selectbox(key="variant_base").set_value("olmo2-7b")
    at.selectbox(key="variant_axis").set_value("attention_pattern").run()
    at.selectbox(key="variant_value_attention_pattern").set_value("5:1")
    next(b for b in at.button if b.label == "Add variant").click().run()
    assert not at.exception and len(at.error) == 1 and "cannot build attention_pattern=5:1" in shown(at.error[0].value)
    assert "\n" not in at.error[0].value.strip()
    assert len(at.sidebar.multiselect[0].value) == 3
    at.switch_page("views/parameters.py").run()  # the variant's config travels to the other pages
    no_errors(at)
    assert any(
        "OLMo 2 7B [qk_norm=off]" in str(df.value.index.tolist() + list(df.value.columns)) for df in at.dataframe
    )


def _state_free() -> str:
    from views._state import FREE

    return FREE
