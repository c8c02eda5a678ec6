"""Training on equal footing (CPU, small): learning, determinism, identical batches, budgets, routers,
checkpoints, bad input, stop."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.arch import catalog
from backend.arch.architecture import resolve
from backend.arch.errors import ArchLabError
from backend.train import budget, data, probes
from backend.train.recipe import Recipe, RunSpec, parse_amount, preset
from backend.train.runner import TrainingRun
from backend.train.store import read_run, trained_models

VOCAB = 2048


def tiny(**kw) -> Recipe:
    return preset(
        "tiny",
        **{
            "budget": 100_000,
            "layers": 2,
            "batch": 8,
            "seq_len": 64,
            "tokens": 8 * 64 * 40,
            "eval_every": 20,
            "eval_windows": 4,
            "probe_examples": 16,
            **kw,
        },
    )


def run(models, recipe, tmp_path, **kw) -> TrainingRun:
    r = TrainingRun(RunSpec(tuple(models), recipe, "cpu"), root=tmp_path, **kw).start()
    r.join(600)
    assert not r.running
    return r


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """A dense and a MoE miniature trained side by side on the corpus (shared by several tests)."""
    root = tmp_path_factory.mktemp("runs")
    return run(["llama3-8b", "qwen3-30b-a3b"], tiny(), root), root


def losses(v, key):
    return [m["train_loss"] for m in v.metrics if m["model"] == key and m["train_loss"] != ""]


def test_loss_goes_down_on_the_corpus_and_every_model_saw_the_same_batches(corpus_run):
    r, _ = corpus_run
    v = r.view()
    assert v.status == "finished", v.message
    for key in ("llama3-8b", "qwen3-30b-a3b"):
        ls = losses(v, key)
        assert len(ls) == r.spec.recipe.steps
        assert np.mean(ls[-5:]) < np.mean(ls[:5]) - 0.5
    hashes = {m.stream_sha256 for m in v.models}
    assert len(hashes) == 1 and all(m.batches == r.spec.recipe.steps for m in v.models)


def test_the_hash_is_of_the_batches_themselves():
    d = data.corpus_data()
    s = data.BatchStream(d.train, 4, 32, seed=3)
    a, b = data.StreamHash(), data.StreamHash()
    for i in range(5):
        a.update(s[i])
        b.update(data.BatchStream(d.train, 4, 32, seed=3)[i])  # another consumer, same (seed, step)
    assert a.hexdigest() == b.hexdigest()
    c = data.StreamHash()
    for i in (0, 1, 2, 4, 3):
        c.update(s[i])
    assert c.hexdigest() != a.hexdigest()  # order matters


def test_same_seed_same_curve_other_seed_other_curve(tmp_path):
    r = tiny(tokens=8 * 64 * 12, eval_every=6)
    a, b = run(["olmo2-7b"], r, tmp_path), run(["olmo2-7b"], r, tmp_path)
    c = run(["olmo2-7b"], replace(r, seed=1), tmp_path)
    la, lb, lc = (losses(x.view(), "olmo2-7b") for x in (a, b, c))
    assert len(la) == r.steps and la == lb
    assert la != lc


def test_loss_goes_down_on_mqar_and_accuracy_is_reported(tmp_path):
    r = run(["llama3-8b"], tiny(data="mqar", seq_len=64, tokens=8 * 64 * 60, lr=3e-3, probe_vocab=256), tmp_path)
    v = r.view()
    assert v.status == "finished", v.message
    ls = losses(v, "llama3-8b")
    assert np.mean(ls[-5:]) < np.mean(ls[:5]) - 0.3
    acc = [p for p in v.probes if p["model"] == "llama3-8b"]
    assert {(p["kv_pairs"], p["seq_len"]) for p in acc} == {(4, 64), (8, 64), (16, 64)}
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in acc)


def test_mqar_follows_zoology():
    b = probes.mqar(np.random.default_rng(0), 50, 64, 8, 512)
    half = 256
    for x, y, d in zip(b.inputs, b.labels, b.distance):
        keys, values = x[0:16:2], x[1:16:2]
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < 512)).all()
        assert len(set(keys)) == 8 and len(set(values)) == 8
        answers = np.flatnonzero(y != probes.IGNORE)
        assert len(answers) == 8
        for pos in answers:  # the query at pos is a key; the answer is its value; distance counts back to the key
            k = int(np.flatnonzero(keys == x[pos])[0])
            assert y[pos] == values[k] and d[pos] == pos - 2 * k


@pytest.mark.parametrize("key", catalog.keys())
def test_every_catalog_architecture_meets_a_budget_within_5_percent(key):
    s = budget.size_to_budget(key, 1_000_000, "active", vocab=VOCAB)
    assert abs(s.value / 1_000_000 - 1) <= 0.05
    assert s.value == budget.non_embedding(s.arch.counts, "active")  # the value is the exact count
    full, mini = resolve(key).spec, s.arch.spec
    assert mini.attention_kind == full.attention_kind and mini.norm_placement == full.norm_placement
    assert mini.qk_norm == full.qk_norm and mini.tied_embeddings == full.tied_embeddings
    if full.attention_kind == "GQA":
        assert mini.num_heads // mini.num_kv_heads == full.num_heads // full.num_kv_heads  # exact ratio
    if full.moe:
        assert mini.moe.num_experts == full.moe.num_experts  # the real count: no cap asked for
        assert mini.moe.top_k == full.moe.top_k and (mini.moe.num_shared > 0) == (full.moe.num_shared > 0)


@pytest.mark.parametrize("metric,target", [("total", 3e6), ("flops", 3e7)])
@pytest.mark.parametrize("key", ["llama3-8b", "deepseek-v3", "gemma3-27b", "qwen3-next-80b-a3b"])
def test_other_budgets_within_5_percent(key, metric, target):
    s = budget.size_to_budget(key, target, metric, vocab=VOCAB)
    assert abs(s.value / target - 1) <= 0.05


def test_deepseek_keeps_256_experts_top8_one_shared_and_its_layer_pattern():
    s = budget.size_to_budget("deepseek-v3", 1_000_000, "active", vocab=VOCAB)
    m = s.arch.spec
    assert (m.moe.num_experts, m.moe.top_k, m.moe.num_shared) == (256, 8, 1)
    assert m.mla is not None and m.moe.bias_corrected and m.layers[0].mlp == "dense" and m.layers[1].mlp == "moe"


def test_windows_scale_to_the_training_context():
    gemma = budget.size_to_budget("gemma3-27b", 1e6, "active", seq_len=256, vocab=VOCAB).arch.spec
    assert gemma.window == 64 and gemma.layer_pattern.startswith("S S S S S F")  # 1024 × 256 / 4096
    oss = budget.size_to_budget("gpt-oss-20b", 1e6, "active", seq_len=256, vocab=VOCAB).arch.spec
    assert oss.window == 16  # 128 scaled is 8, floored at 16


def test_a_cap_on_total_parameters_reduces_experts_and_says_so():
    s = budget.size_to_budget("deepseek-v3", 300_000, "active", vocab=VOCAB, max_total=1_600_000)
    assert s.total <= 1_600_000 and s.experts < 256 and any("routed experts" in n for n in s.notes)


def test_router_statistics_agree_with_a_recomputation():
    """The load RouterStats counts equals the top-k recomputed from the router weights; the aux loss equals
    transformers' load_balancing_loss_func on the same logits."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from backend.live.routers import router_modules
    from backend.train.trainer import Member

    s = budget.size_to_budget("qwen3-30b-a3b", 100_000, "active", vocab=VOCAB, layers=2)
    m = Member("q", s, tiny(), torch.device("cpu")).start()
    seen = []
    routers = router_modules(m.model)
    hooks = [r.register_forward_hook(lambda mod, a, o: seen.append((a[0].detach(), o[0].detach()))) for _, r in routers]
    batch = data.BatchStream(data.corpus_data().train, 4, 32, 0)[0]
    m.train_step(batch)
    for h in hooks:
        h.remove()
    snap = m.routers.snapshot(1)
    k, E = s.arch.spec.moe.top_k, s.arch.spec.moe.num_experts
    for row, ((_, _router), (_x, logits)) in enumerate(zip(routers, seen)):
        # recompute from the router's own weight (the training step changed it since: use the captured logits)
        choice = torch.topk(torch.softmax(logits.reshape(-1, E).float(), -1), k, dim=-1).indices
        assert np.array_equal(snap.load[row], np.bincount(choice.reshape(-1).numpy(), minlength=E))
    ref = load_balancing_loss_func(tuple(lg for _, lg in seen), E, k)
    assert snap.aux_loss == pytest.approx(float(ref), rel=1e-4)
    m.close()


def test_a_checkpoint_reloads_with_the_same_validation_loss_and_loads_in_the_playground(corpus_run):
    from backend.live import runtime
    from backend.live.generation import GenerationRun, GenerationSettings

    r, root = corpus_run
    rec = read_run(r.id, root)
    [model] = [t for t in trained_models([r.id], root) if t.key == "llama3-8b"]
    res = rec.results.set_index("model").loc["llama3-8b"]
    lm = runtime.load(
        runtime.ModelRequest(
            source=f"local:{model.path}", mode="pretrained", path=str(model.path), device="cpu", dtype="fp32"
        )
    )
    from backend.train.runner import FINAL_WINDOWS

    windows = data.validation_windows(data.corpus_data().validation, r.spec.recipe.seq_len, FINAL_WINDOWS)
    with torch.no_grad():
        total = n = 0
        for i in range(0, len(windows), 64):
            w = torch.from_numpy(windows[i : i + 64].astype(np.int64))
            logits = lm.model(input_ids=w[:, :-1]).logits
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"
                )
            )
            n += w[:, 1:].numel()
    assert total / n == pytest.approx(res["val_loss"], abs=1e-5)
    g = GenerationRun([lm.request], "And God said", GenerationSettings(max_new_tokens=8)).start()
    g.join(60)
    assert g.stats(0)["status"] == "finished" and g.text(0)
    runtime.release(lm.request)


def test_run_folder_has_every_part(corpus_run):
    r, root = corpus_run
    folder = root / r.id
    recipe = json.loads((folder / "recipe.json").read_text())
    assert set(recipe["shared"]) >= {
        "tokenizer",
        "data",
        "batch_order",
        "optimizer",
        "schedule",
        "batch",
        "tokens",
        "precision",
        "seed",
    }
    rec = read_run(r.id, root)
    assert set(rec.metrics["model"]) == {"llama3-8b", "qwen3-30b-a3b"}
    assert rec.metrics["val_loss"].notna().sum() >= 4
    assert set(rec.routing["model"]) == {"qwen3-30b-a3b"}
    for key in ("llama3-8b", "qwen3-30b-a3b"):
        info = json.loads((folder / "models" / key / "training.json").read_text())
        assert info["stream_sha256"] == r.view().models[0].stream_sha256
        assert (folder / "models" / key / "model.safetensors").is_file()


def test_stop_takes_effect_within_a_step_and_keeps_checkpoints(tmp_path):
    r = TrainingRun(RunSpec(("llama3-8b", "olmo2-7b"), tiny(tokens=8 * 64 * 10_000), "cpu"), root=tmp_path).start()
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(m.step >= 3 for m in r.view().models):
        time.sleep(0.05)
    steps_at_stop = [m.step for m in r.view().models]
    r.cancel()
    r.join(120)
    v = r.view()
    assert v.status == "stopped"
    for m, before in zip(v.models, steps_at_stop):
        assert m.status == "stopped" and m.step <= before + 1 + 1  # the step in flight, and one reported late
        assert (tmp_path / r.id / "models" / m.key / "model.safetensors").is_file()


@pytest.mark.parametrize("stacked", [True, False])
def test_one_failing_model_does_not_stop_the_others(tmp_path, monkeypatch, stacked):
    """Out of memory in one model's step, stacked (the default) or one model at a time: that model fails with one
    line, the other finishes."""
    from backend.train import stack, trainer

    cls, method = (stack.Stack, "train_step") if stacked else (trainer.Member, "train_step")
    real = getattr(cls, method)
    key_of = (lambda self: self.runs[0].key) if stacked else (lambda self: self.key)

    def flaky(self, batch):
        if key_of(self) == "olmo2-7b" and self.step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(cls, method, flaky)
    r = run(["llama3-8b", "olmo2-7b"], tiny(tokens=8 * 64 * 6), tmp_path, stacked=stacked)
    v = r.view()
    by = {m.key: m for m in v.models}
    assert by["olmo2-7b"].status == "failed" and "out of memory" in by["olmo2-7b"].error
    assert "\n" not in by["olmo2-7b"].error
    assert by["llama3-8b"].status == "finished" and v.status == "finished"
    assert trained_models([r.id], tmp_path)[0].key == "llama3-8b"


def test_an_architecture_that_cannot_meet_the_budget_fails_alone(tmp_path):
    r = run(["llama3-8b", "qwen3-235b-a22b"], tiny(budget=60_000, tokens=8 * 64 * 3), tmp_path)
    by = {m.key: m for m in r.view().models}
    assert by["qwen3-235b-a22b"].status == "failed" and "cannot meet" in by["qwen3-235b-a22b"].error
    assert by["llama3-8b"].status == "finished"


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"\x00\x01binary" * 5000, "binary"),
        (("Voilà déjà vu. " * 5000).encode("latin-1"), "not UTF-8"),
        (b"short text", "at least"),
    ],
)
def test_bad_uploads_get_one_line(payload, message):
    with pytest.raises(ArchLabError, match=message) as e:
        data.text_data(payload, "mine.txt")
    assert "\n" not in str(e.value)


def test_a_huge_upload_and_too_little_text_for_the_budget_are_refused():
    with pytest.raises(ArchLabError, match="at most"):
        data.text_data(b"a" * (data.MAX_UPLOAD_BYTES + 1), "big.txt")
    small = data.text_data(("To be, or not to be, that is the question.\n" * 800).encode(), "hamlet.txt")
    with pytest.raises(ArchLabError, match="times"):
        data.check_enough(small, 50_000_000, 128)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"budget": 1e12}, "budget"),
        ({"budget": -1}, "budget"),
        ({"tokens": 10}, "tokens"),
        ({"batch": 0}, "batch"),
        ({"seq_len": 7}, "sequence length"),
        ({"lr": float("nan")}, "learning rate"),
        ({"data": "wikipedia"}, "data"),
        ({"budget_metric": "vibes"}, "budget"),
    ],
)
def test_absurd_recipes_are_refused_with_one_line(bad, message):
    with pytest.raises(ArchLabError, match=message) as e:
        replace(Recipe(), **bad).validate()
    assert "\n" not in str(e.value)


def test_amounts_and_run_specs_round_trip():
    assert parse_amount("4M") == 4e6 and parse_amount("250k") == 2.5e5 and parse_amount(3) == 3.0
    with pytest.raises(ArchLabError):
        parse_amount("lots")
    spec = RunSpec(("deepseek-v3", {"model_type": "gpt2", "n_layer": 2}), tiny(), "cpu").validate()
    assert RunSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ArchLabError, match="unknown"):
        RunSpec.from_json(json.dumps({"models": ["gpt2"], "recipe": {"epochs": 3}}))


def test_attention_kernel_choice():
    """On a GPU, a model class without SDPA but with flex attention (gpt-oss: sinks) trains with flex attention
    when its heads are at least 16 wide; everything else, and every model on the CPU, keeps transformers' default."""
    import torch

    from backend.arch import catalog
    from backend.arch.architecture import resolve
    from backend.train.trainer import attention_for

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    oss = resolve("gpt-oss-20b").config
    assert attention_for(oss, cuda) == "flex_attention" and attention_for(oss, cpu) is None
    assert attention_for(oss, cuda, None) is None and attention_for(oss, cuda, "eager") == "eager"
    narrow = dict(catalog.raw_config("gpt-oss-20b"), head_dim=8)
    assert attention_for(resolve(narrow).config, cuda) is None
    assert attention_for(resolve("llama3-8b").config, cuda) is None


def test_probe_loss_on_answer_rows_equals_the_ignore_index_mean():
    import numpy as np
    import torch.nn.functional as F

    from backend.train.probes import IGNORE, ProbeBatch
    from backend.train.trainer import token_loss

    rng = np.random.default_rng(0)
    labels = np.full((4, 32), IGNORE)
    labels[:, [7, 19, 30]] = rng.integers(0, 50, (4, 3))
    batch = ProbeBatch(rng.integers(0, 50, (4, 32)), labels, np.zeros((4, 32), dtype=np.int64))
    logits = torch.randn(4, 32, 50, requires_grad=True)
    y = torch.from_numpy(labels)
    mine = token_loss(logits, y, batch)
    full = F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(mine, full, rtol=1e-6)
    (g1,) = torch.autograd.grad(mine, logits)
    (g2,) = torch.autograd.grad(full, logits)
    assert torch.allclose(g1, g2, atol=1e-8) and g1[:, 8].abs().sum() == 0
