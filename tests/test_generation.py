"""Streaming generation: events, equality with HF generate, sampling, stop, cancel, failure isolation."""

import time

import pytest
import torch

from backend.arch.errors import ArchLabError
from backend.live.generation import (
    Failed,
    Finished,
    GenerationRun,
    GenerationSettings,
    Routing,
    Token,
    _stop_hold,
)
from backend.live.runtime import ModelRequest, load

PROMPT = "def add(a, b):"
QWEN = ModelRequest("qwen3-4b", size="tiny")
MOE = ModelRequest("deepseek-v3", size="tiny")


def _run(reqs, settings=GenerationSettings(max_new_tokens=10, ignore_eos=True), prompt=PROMPT):
    run = GenerationRun(reqs, prompt, settings).start()
    events = []
    deadline = time.monotonic() + 60
    while not run.done and time.monotonic() < deadline:
        events += run.poll(0.05)
    return run, events


@pytest.mark.parametrize("req", [QWEN, MOE, ModelRequest("gemma3-27b", size="tiny")])
def test_greedy_equals_hf_generate(req):
    run, events = _run([req])
    lm = load(req)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = lm.model.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    assert run.token_ids(0) == ref.tolist()
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Loading" and "Started" in kinds and kinds[-1] == "Finished"
    toks = [e for e in events if isinstance(e, Token)]
    assert [t.step for t in toks] == list(range(10))
    assert "".join(t.text for t in toks) == run.text(0) == lm.tokenizer.decode(ref, skip_special_tokens=True)
    fin = events[-1]
    assert fin.reason == "length" and fin.new_tokens == 10 and fin.tokens_per_s > 0 and 0 < fin.ttft_s < fin.total_s
    assert toks[-1].elapsed_s <= fin.total_s
    st = run.stats(0)
    assert st["status"] == "finished" and st["new_tokens"] == 10 and st["device"] == "cpu"


def test_timing_is_decode_tokens_over_decode_time():
    run, events = _run([QWEN], GenerationSettings(max_new_tokens=20, ignore_eos=True))
    toks = [e for e in events if isinstance(e, Token)]
    fin = events[-1]
    assert fin.ttft_s == pytest.approx(toks[0].elapsed_s, abs=1e-6)
    assert fin.tokens_per_s == pytest.approx(19 / (toks[-1].elapsed_s - toks[0].elapsed_s), rel=1e-6)


def test_sampling_is_seeded_per_run():
    s = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.9, seed=7, ignore_eos=True)
    a, _ = _run([QWEN], s)
    b, _ = _run([QWEN], s)
    c, _ = _run([QWEN], GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.9, seed=8, ignore_eos=True))
    g, _ = _run([QWEN], GenerationSettings(max_new_tokens=12, ignore_eos=True))
    assert a.token_ids(0) == b.token_ids(0)
    assert a.token_ids(0) != c.token_ids(0) or a.token_ids(0) != g.token_ids(0)


def test_stop_string_truncates():
    greedy, _ = _run([QWEN], GenerationSettings(max_new_tokens=16, ignore_eos=True))
    full = greedy.text(0)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    run, events = _run([QWEN], GenerationSettings(max_new_tokens=16, stop=(stop,), ignore_eos=True))
    assert events[-1].reason == "stop"
    assert run.text(0) == full[: full.find(stop)]
    assert "".join(e.text for e in events if isinstance(e, Token)) == run.text(0)


def test_stop_hold():
    assert _stop_hold("abc<|e", ("<|end|>",)) == 3 and _stop_hold("abc", ("xyz",)) == 0


def test_eos_stops(monkeypatch):
    lm = load(QWEN)
    greedy, _ = _run([QWEN], GenerationSettings(max_new_tokens=8))
    first = greedy.token_ids(0)[0] if greedy.token_ids(0) else None
    if first is None:
        pytest.skip("model emitted EOS at once")
    import backend.live.generation as g

    assert g._eos_ids(lm) == {lm.tokenizer.eos_token_id}
    monkeypatch.setattr(g, "_eos_ids", lambda _lm: {first})
    run, events = _run([QWEN], GenerationSettings(max_new_tokens=8))
    assert events[-1].reason == "eos" and run.token_ids(0) == []


def test_cancel_stops_within_a_step():
    lm = load(QWEN)
    run = GenerationRun([QWEN], PROMPT, GenerationSettings(max_new_tokens=4096, ignore_eos=True)).start()
    seen = 0
    while seen < 3:
        seen += sum(isinstance(e, Token) for e in run.poll(0.05))
    at_cancel = run.stats(0)["new_tokens"]
    run.cancel()
    run.join(10)
    assert run.stats(0)["new_tokens"] - at_cancel <= 1  # at most the step in flight
    events = run.poll(0)
    fin = [e for e in events if isinstance(e, Finished)][0]
    assert fin.reason == "cancelled"
    after = [e for e in events if isinstance(e, Token)]
    assert len(after) <= 2  # at most the step in flight (plus one already queued)
    assert lm.lock.acquire(timeout=1)
    lm.lock.release()


def test_one_failing_model_does_not_stop_the_others(monkeypatch):
    lm = load(MOE)
    calls = {"n": 0}
    orig = type(lm.model).forward

    def boom(self, *a, **k):
        if self is lm.model:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated device failure")
        return orig(self, *a, **k)

    monkeypatch.setattr(type(lm.model), "forward", boom)
    run, events = _run([MOE, QWEN, ModelRequest("no-such-model")])
    fails = {e.slot: e for e in events if isinstance(e, Failed)}
    assert set(fails) == {0, 2}
    assert "simulated device failure" in fails[0].message and "no-such-model" in fails[2].message
    assert run.stats(1)["status"] == "finished" and run.stats(1)["new_tokens"] == 10
    assert run.stats(0)["status"] == "failed"


def test_routing_events_follow_the_contract():
    run, events = _run([MOE], GenerationSettings(max_new_tokens=6, ignore_eos=True))
    recs = [e for e in events if isinstance(e, Routing)]
    assert [r.step for r in recs] == list(range(6))
    trace = run.routing(0)
    assert len(trace.steps) == 6 and trace.moe_layers == list(load(MOE).spec.moe.layers)
    prompt_ids = load(MOE).tokenizer(PROMPT).input_ids
    assert recs[0].record.token_ids == prompt_ids
    assert [r.record.token_ids[0] for r in recs[1:]] == run.token_ids(0)[:5]
    for _layer, (idx, w) in recs[0].record.layers.items():
        assert idx.shape == w.shape == (len(prompt_ids), trace.top_k)
    no, _ = _run([MOE], GenerationSettings(max_new_tokens=3, capture_routing=False, ignore_eos=True))
    assert no.routing(0) is None


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=4097),
        dict(temperature=-0.1),
        dict(temperature=11),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(stop=("",)),
    ],
)
def test_settings_validated(bad):
    with pytest.raises(ArchLabError):
        GenerationRun([QWEN], PROMPT, GenerationSettings(**bad))


def test_prompt_validated():
    with pytest.raises(ArchLabError, match="empty"):
        GenerationRun([QWEN], "   ", GenerationSettings())
    with pytest.raises(ArchLabError):
        GenerationRun([], PROMPT, GenerationSettings())
    run, events = _run([ModelRequest("gpt2", size="tiny")], prompt="word " * 1100)  # GPT-2 takes 1,024 positions
    assert isinstance(events[-1], Failed) and "at most 1,024" in events[-1].message


def _metaspace_tokenizer():
    """A SentencePiece-style tokenizer (▁ for spaces, the first token's leading space dropped when decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "▁Hello", "▁world", "!", "▁a", "b", "▁", "é"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")


@pytest.mark.parametrize("which", ["offline", "metaspace"])
def test_incremental_text_equals_decoding_everything(which):
    import random

    from backend.live.generation import IncrementalText
    from backend.live.tokenizer import load_offline

    tok = load_offline() if which == "offline" else _metaspace_tokenizer()
    rng = random.Random(0)
    for _trial in range(20):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 120))]
        text, shown = IncrementalText(tok), []
        for i, t in enumerate(ids):
            shown.append(text.add(t))
            full = tok.decode(ids[: i + 1], skip_special_tokens=True)
            assert full.startswith(shown[-1].rstrip("\ufffd"))  # never ahead of, never different from, the truth
        assert text.flush() == tok.decode(ids, skip_special_tokens=True)
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))  # text only grows
