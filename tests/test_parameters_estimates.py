"""AppTest of the estimate sections of Parameters & Memory: roofline speed, estimate vs measured, memory from a
checkpoint, training memory, and the "how this is computed" expanders."""

import json

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from backend.arch import gpus, roofline, train_memory

TIMEOUT = 180


def page(**query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/parameters.py").run()
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def frame(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def csv_keys(at: AppTest) -> list[str]:
    return [b.proto.id for b in at.get("download_button") if b.proto.label == "CSV"]


def test_speed_and_measured_sections():
    at = page(models="llama3-8b,deepseek-v3")
    no_errors(at)
    headers = [h.value for h in at.header]
    assert {"Speed estimates (roofline)", "Estimate vs measured", "Memory from a checkpoint", "Training memory"} <= set(
        headers
    )
    speed = frame(at, "tok/s per sequence")
    assert list(speed.index) == ["Llama 3 8B", "DeepSeek V3 / R1 · MLA engine", "DeepSeek V3 / R1 · MLA transformers"]
    e = roofline.estimate("llama3-8b", gpus.get("h100"), 1, 2048, 512, "bf16")
    assert speed.loc["Llama 3 8B", "tok/s per sequence"] == pytest.approx(e.tok_s)
    assert speed.loc["Llama 3 8B", "Decode bound by"] == "memory"
    assert (
        speed.loc["DeepSeek V3 / R1 · MLA transformers", "Decode step (ms)"]
        > speed.loc["DeepSeek V3 / R1 · MLA engine", "Decode step (ms)"]
    )
    t = titles(at)
    assert "Decode step time by component" in t and "Prefill time by component" in t
    assert "Decode speed on each GPU (roofline)" in t and any("estimate vs measured" in x for x in t)
    measured = frame(at, "Measured / estimate")
    llama = measured[measured["Model"] == "Llama 3 8B"]
    assert len(llama) >= 1
    assert (llama["Measured / estimate"] == llama["Measured (tok/s)"] / llama["Estimate (tok/s)"]).all()
    assert set(measured[measured["Model"] == "DeepSeek V3 / R1"]["Shape"]) == {
        "first 4 of 61 layers, full width",
        "first 5 of 61 layers, full width",
    }
    labels = [x.label for x in at.expander]
    assert labels.count("How this is computed") >= 5 and "GPU table (published peak figures)" in labels
    text = " ".join(m.value for m in at.markdown)
    assert "max(bytes / BW, FLOPs / peak)" in text and "E × (1 − (1 − k / E)^B)" in text
    assert "total − routed + routed × k / E" in text and "kv_heads × (d_k + d_v)" in text
    keys = " ".join(csv_keys(at))
    for name in ("speed-estimates", "gpu-table", "estimate-vs-measured", "training-memory"):
        assert name in keys


def test_custom_gpu_and_settings_in_the_url():
    at = page(models="qwen3-30b-a3b", sbatch="8")
    assert at.number_input(key="_w_sbatch").value == 8
    before = frame(at, "tok/s per sequence").iloc[0]["tok/s per sequence"]
    at.selectbox(key="_w_sgpu").set_value("custom").run()
    no_errors(at)
    assert at.query_params["sgpu"] == "custom"
    at.number_input(key="_w_cbw").set_value(1.0).run()
    no_errors(at)
    slow = frame(at, "tok/s per sequence").iloc[0]["tok/s per sequence"]
    assert slow < before
    e = roofline.estimate("qwen3-30b-a3b", gpus.custom(1.0, 989.4), batch=8)
    assert slow == pytest.approx(e.tok_s) and frame(at, "tok/s per sequence").iloc[0][
        "Experts touched per MoE layer"
    ] == pytest.approx(128 * (1 - (1 - 8 / 128) ** 8))


def test_checkpoint_section_inside_and_outside_the_model_folders(tmp_path, monkeypatch):
    allowed = tmp_path / "models"
    ck = allowed / "tiny"
    ck.mkdir(parents=True)
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16)},
        str(ck / "model.safetensors"),
    )
    (ck / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 256,
                "quantization_config": {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8"},
            }
        )
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.setenv("ARCHLAB_MODEL_DIRS", str(allowed))
    at = page(models="gpt2")
    assert any("Enter a checkpoint" in i.value for i in at.info)
    at.text_input(key="_w_ckpt").input(str(ck)).run()
    no_errors(at)
    kinds = frame(at, "Bits per parameter")
    assert kinds.loc["bf16 weights", "Bytes"] == 64 * 64 * 2
    assert [m.value for m in at.metric][:1] == ["8.00 KiB"]
    assert any("**fp8**" in m.value and "kv_cache_quant_algo" in m.value.replace("\\", "") for m in at.markdown)
    assert any("checkpoint bytes by storage format" in x.lower() for x in titles(at))
    at.text_input(key="_w_ckpt").input(str(outside)).run()
    assert not at.exception
    assert any("Refused" in e.value for e in at.error)


def test_training_section_and_measured_file(tmp_path, monkeypatch):
    monkeypatch.setattr(train_memory, "MEASURED_FILE", tmp_path / "absent.json")  # whatever bench/results holds
    at = page(models="llama3-8b", tpar="zero3", tgpus="8")
    no_errors(at)
    df = frame(at, "Total per GPU (GiB)")
    r = train_memory.training_memory("llama3-8b", 8, 2048, "bf16", True, False, "adamw", "zero3", 8)
    assert df.loc["Llama 3 8B", "Total per GPU (GiB)"] == pytest.approx(r.total / 2**30)
    assert "Gathered layers (ZeRO-3/FSDP) (GiB)" in df.columns
    assert any("Measured peaks: none yet" in c.value for c in at.caption)
    at.toggle(key="_w_tckpt").set_value(True).run()
    assert (
        frame(at, "Total per GPU (GiB)").loc["Llama 3 8B", "Activations (GiB)"]
        < df.loc["Llama 3 8B", "Activations (GiB)"]
    )
    # a measured file in the documented format (made up here, in a temporary folder only)
    f = tmp_path / "train-memory.json"
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
    }
    f.write_text(
        json.dumps(
            {
                "gpu": "test GPU",
                "rows": [
                    {
                        "model": "tiny llama",
                        "config": cfg,
                        "batch": 4,
                        "seq_len": 64,
                        "dtype": "bf16",
                        "master_fp32": True,
                        "checkpointing": False,
                        "measured_peak_bytes": 5_000_000,
                    }
                ],
            }
        )
    )
    monkeypatch.setattr(train_memory, "MEASURED_FILE", f)
    at.run()
    no_errors(at)
    m = frame(at, "Measured peak (GiB)")
    assert m.iloc[0]["Model"] == "tiny llama"
    assert m.iloc[0]["Measured / estimate"] == pytest.approx(5_000_000 / (m.iloc[0]["Estimate (GiB)"] * 2**30))


def test_visitor_names_are_shown_as_text():
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
    }
    at.sidebar.file_uploader[0].upload(
        "[x](javascript:alert(1)).json", json.dumps(cfg).encode(), "application/json"
    ).run()
    at.switch_page("views/parameters.py").run()
    no_errors(at)
    heads = [m.value for m in at.markdown if m.value.startswith("#####")]
    assert any("javascript" in h for h in heads) and not any("](" in h for h in heads)  # escaped: no link forms


def test_bad_training_setting_gives_one_line():
    at = page(models="llama3-8b", tpar="ep", tgpus="4")
    assert not at.exception
    assert any("expert parallel needs a model with routed experts" in e.value for e in at.error)
    assert frame(at, "tok/s per sequence") is not None  # the other sections still render
