"""The CLI: tables, JSON, CSV, and one-line errors with exit status 2."""

import csv
import io
import json
import subprocess
import sys

import pytest

from backend.__main__ import main


def test_params_json(capsys):
    assert main(["params", "gpt2", "deepseek-v3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["total"] == 124_439_808 and rows[1]["total"] == 671_026_404_352


def test_memory_csv(capsys):
    assert main(["memory", "deepseek-v3", "--context", "1000", "--dtype", "bf16", "--csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert int(row["kv_bytes"]) == 61 * 576 * 2 * 1000


def test_list_and_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-v3" in out and "qwen3-next-80b-a3b" in out


def test_config_file_path(tmp_path, capsys):
    p = tmp_path / "my.json"
    p.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 100,
            }
        )
    )
    assert main(["params", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["total"] > 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["params", "nope"], "unknown model"),
        (["memory", "gpt2", "--context", "0"], "context length"),
        (["memory", "gpt2", "--dtype", "fp5"], "unknown dtype"),
        (["plan", "gpt2", "--gpus", "0"], "--gpus"),
        (["params", "missing.json"], "no such config"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_config_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "backend", "params", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
