"""assets/specs.json: the catalog's specs and counts without torch, equal to a fresh build, ignored when stale."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.arch import catalog, speccache
from backend.arch.architecture import resolve
from backend.arch.configs import build_config
from backend.arch.counting import count_tensors
from backend.arch.meta import build_meta_model
from backend.arch.spec import read_spec

ROOT = Path(__file__).resolve().parent.parent


def _canon(key: str) -> str:
    return json.dumps(catalog.raw_config(key), sort_keys=True)


def test_shipped_specs_are_current_and_equal_a_fresh_build():
    data = json.loads(speccache.PATH.read_text())
    assert data["fingerprint"] == speccache.fingerprint(), (
        "assets/specs.json was built by other code or transformers: run python -m backend.arch.speccache"
    )
    for key in catalog.keys():
        canon = _canon(key)
        cfg = build_config(canon)
        model = build_meta_model(cfg)
        fresh = read_spec(cfg, model)
        assert speccache.lookup(canon) == fresh, key
        assert speccache.lookup_counts(canon) == count_tensors(model, fresh), key
    assert len(data["specs"]) == len(catalog.keys())
    assert resolve("deepseek-v3").counts.total == 671_026_404_352  # what the pages read is the stored figure


@pytest.mark.parametrize("key", ["gpt2", "deepseek-v3", "llama4-scout", "qwen3-next-80b-a3b", "gpt-oss-20b"])
def test_json_round_trip(key):
    spec = resolve(key).spec
    back = speccache.from_json(json.loads(json.dumps(speccache.to_json(spec))))
    assert back == spec and isinstance(back.layers, tuple) and isinstance(back.layers[0], type(spec.layers[0]))


def test_other_code_or_configs_are_not_served(monkeypatch):
    canon = _canon("gpt2")
    assert speccache.lookup(canon) is not None and speccache.lookup_counts(canon).total == 124_439_808
    assert speccache.lookup(canon.replace('"n_layer": 12', '"n_layer": 13')) is None  # not a catalog config
    speccache._entries.cache_clear()
    monkeypatch.setattr(speccache, "fingerprint", lambda: "built-by-other-code")
    try:
        assert speccache.lookup(canon) is None and speccache.lookup_counts(canon) is None
    finally:
        speccache._entries.cache_clear()


def test_first_page_data_needs_no_torch():
    """What the Architectures page draws for the default models, and the exact parameter table, in a fresh
    interpreter: no torch, no transformers."""
    code = (
        "import sys; from backend.arch.architecture import resolve; from backend.present import diagram, tables; "
        "from views import _state; a = {k: resolve(k) for k in _state.DEFAULT_MODELS}; "
        "diagram.comparison_figures({k: x.spec for k, x in a.items()}, {}); tables.feature_matrix(a); "
        "[tables.entry(x) for x in a.values()]; tables.params_table(a); "
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_warmup_runs_once_in_the_background():
    """The warm-up a fresh server starts after its first page: once, in a thread, and it builds what it says."""
    code = (
        "import sys; from backend.present import warmup; from backend.arch import libs; "
        "from backend.arch.architecture import resolve; "
        "assert warmup.start(['gpt2', 'qwen3-30b-a3b']) and not warmup.start(['gpt2']); assert warmup.join(600); "
        "print(sorted(warmup.done), libs.loaded() and libs.models_loaded(), all('meta_model' in resolve(k).__dict__ "
        "for k in ('gpt2', 'qwen3-30b-a3b')), 'backend.live.tokenizer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (
        "['accelerate', 'model gpt2', 'model qwen3-30b-a3b', 'tokenizer', "
        "'torch + transformers', 'trained miniatures', 'transformers model code'] "
        "True True True"
    )
