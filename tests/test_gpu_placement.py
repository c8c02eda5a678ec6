"""One model per GPU: with several GPUs each model goes to a GPU holding none of ours when it fits there."""

import pytest

from backend.live import runtime
from backend.live.runtime import plan_placement


def _hw(free, models=None):
    models = models or [0] * len(free)
    return {
        "cuda": True,
        "cpu_threads": 2,
        "ram_available_gib": 16.0,
        "gpus": [
            {"index": i, "name": "fake", "total_gib": 80.0, "free_gib": f, "models": m}
            for i, (f, m) in enumerate(zip(free, models))
        ],
    }


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_model_goes_to_the_gpu_holding_no_model(device):
    # GPU 0 has more free memory but already holds a model: the next model goes to GPU 1
    p = plan_placement("qwen3-4b", device, "bf16", _hw([79.0, 60.0], models=[1, 0]))
    assert p.device_map == {"": "cuda:1"}
    # no models anywhere: the most free memory decides
    assert plan_placement("qwen3-4b", device, "bf16", _hw([50.0, 70.0])).device_map == {"": "cuda:1"}


def test_a_model_shares_a_gpu_only_where_it_does_not_fit_alone():
    # qwen3-32b (~61 GiB bf16) does not fit GPU 1's 40 GiB: it shares GPU 0 rather than being sharded
    p = plan_placement("qwen3-32b", "auto", "bf16", _hw([79.0, 40.0], models=[1, 0]))
    assert p.kind == "cuda" and p.device_map == {"": "cuda:0"}
    # fits on no single GPU: sharded over both, whatever they hold
    p = plan_placement("qwen3-32b", "auto", "bf16", _hw([40.0, 40.0], models=[1, 1]))
    assert p.kind == "multi-gpu" and set(p.device_map.values()) == {"cuda:0", "cuda:1"}


def test_models_are_counted_where_they_are_loaded_and_being_built(monkeypatch):
    class Loaded:
        def __init__(self, devices):
            self.bytes_per_device = {d: 1 for d in devices}

    monkeypatch.setattr(runtime, "_cache", {"a": Loaded(["cuda:0"]), "b": Loaded(["cuda:0", "cuda:1"])})
    monkeypatch.setattr(runtime, "_building", {"cuda:1": 1})
    assert runtime._models_per_device() == {"cuda:0": 2, "cuda:1": 2}
    monkeypatch.setattr(runtime, "hardware", lambda: _hw([80.0, 80.0, 80.0]))
    monkeypatch.setattr(runtime, "_reserved", {})
    hw = runtime._budget()
    assert [g["models"] for g in hw["gpus"]] == [2, 2, 0]
    assert plan_placement("qwen3-4b", "auto", "bf16", hw).device_map == {"": "cuda:2"}


def test_two_models_built_at_once_land_on_two_gpus(monkeypatch):
    """The admission step counts a build in flight, so the second model of a run takes the other GPU."""
    monkeypatch.setattr(runtime, "_cache", {})
    monkeypatch.setattr(runtime, "_building", {})
    monkeypatch.setattr(runtime, "_reserved", {})
    monkeypatch.setattr(runtime, "hardware", lambda: _hw([80.0, 80.0]))
    arch = runtime.resolve("qwen3-4b")
    with runtime._admitted(arch, "auto", "bf16") as first:
        with runtime._admitted(arch, "auto", "bf16") as second:
            assert {first.device_map[""], second.device_map[""]} == {"cuda:0", "cuda:1"}
    assert runtime._building == {} and all(v == 0 for v in runtime._reserved.values())
