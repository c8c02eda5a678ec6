"""`python -m backend speed`: table, CSV, JSON with the worked formulas, and one-line errors with exit 2."""

import csv
import io
import json
import subprocess
import sys

import pytest

from backend.__main__ import main


def test_speed_json_has_components_and_working(capsys):
    assert (
        main(
            [
                "speed",
                "llama3-8b",
                "deepseek-v3",
                "--gpu",
                "h100",
                "--batch",
                "1",
                "--context",
                "2048",
                "--prompt",
                "512",
                "--dtype",
                "bf16",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["llama3-8b", "deepseek-v3"]
    llama = rows[0]
    assert llama["bound"] == "memory" and llama["mla"] == ""
    assert llama["tok_s"] == pytest.approx(1e3 / llama["decode_step_ms"])
    assert sum(c["time_s"] for c in llama["decode_components"]) * 1e3 == pytest.approx(llama["decode_step_ms"])
    # dense MLP weights 32 × 3 × 4096 × 14336 in bf16, read once per step at 3.35 TB/s
    assert llama["dense_mlp_ms"] == pytest.approx(32 * 3 * 4096 * 14336 * 2 / 3.35e12 * 1e3)
    assert "max(bytes / BW, FLOPs / peak)" in llama["working"]["decode"]
    assert rows[1]["mla"] == "engine" and rows[1]["experts_touched"] == pytest.approx(8.0)


def test_speed_table_and_csv(capsys):
    assert main(["speed", "qwen3-30b-a3b", "--gpu", "mi300x", "--batch", "8", "--csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["gpu"] == "mi300x" and float(row["experts_touched"]) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 8))
    assert main(["speed", "gpt2", "--gpu", "rtx4090"]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and "tok_s" in out and "memory" in out


def test_custom_gpu(capsys):
    assert main(["speed", "gpt2", "--gpu", "custom", "--bandwidth-tbs", "1", "--bf16-tflops", "100", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["gpu"] == "custom"
    assert row["lm_head_ms"] == pytest.approx(50257 * 768 * 2 / 1e12 * 1e3)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["speed", "nope"], "unknown model"),
        (["speed", "gpt2", "--gpu", "h900"], "unknown GPU"),
        (["speed", "gpt2", "--batch", "0"], "batch"),
        (["speed", "gpt2", "--context", "-3"], "context"),
        (["speed", "gpt2", "--prompt", "0"], "prompt"),
        (["speed", "gpt2", "--dtype", "fp5"], "unknown dtype"),
        (["speed", "gpt2", "--kv-dtype", "int3"], "KV-cache dtype"),
        (["speed", "gpt2", "--mla", "fast"], "MLA mode"),
        (["speed", "gpt2", "--gpu", "custom"], "--bandwidth-tbs"),
        (["speed", "gpt2", "--gpu", "custom", "--bandwidth-tbs", "-1", "--bf16-tflops", "5"], "bandwidth"),
        (["speed", "gpt2", "--batch", "two"], "invalid int"),
    ],
)
def test_bad_input_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_subprocess_exit_status():
    r = subprocess.run(
        [sys.executable, "-m", "backend", "speed", "gpt2", "--gpu", "tpu"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown GPU" in r.stderr
