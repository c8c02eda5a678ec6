"""Routing that learned: the estimator pinned on hand-made data, and the shipped zoo's trained routers measured
against their untrained twins on the same corpus text (recomputed independently where it can be)."""

import math

import numpy as np
import pandas as pd
import pytest

from backend.arch import catalog
from backend.arch.architecture import arch_spec
from backend.arch.errors import ArchLabError
from backend.live import routing, zoo
from backend.live.specialisation import (
    TextRouting,
    chance_information,
    load_balance,
    mutual_information,
    specialisation,
    token_expert_shares,
    top_tokens,
)
from backend.present import specialisation as sp
from backend.present import specialisation_charts as spc

MOE_KEYS = [k for k in catalog.keys() if arch_spec(k).moe is not None]


# ----------------------------------------------------------------- the estimator, by hand


def test_mutual_information_by_hand():
    # joint counts: x=0 -> y=0 three times, y=1 once; x=1 -> y=1 four times (N = 8)
    x = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p = {(0, 0): 3 / 8, (0, 1): 1 / 8, (1, 1): 4 / 8}
    px, py = {0: 0.5, 1: 0.5}, {0: 3 / 8, 1: 5 / 8}
    expected = sum(v * math.log2(v / (px[a] * py[b])) for (a, b), v in p.items())
    assert mutual_information(x, y) == pytest.approx(expected, abs=1e-12)
    assert mutual_information(x, y) == pytest.approx(mutual_information(y, x), abs=1e-12)  # symmetric
    assert mutual_information(x * 7 + 100, y - 3) == pytest.approx(expected, abs=1e-12)  # labels do not matter


def test_deterministic_and_independent_experts():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 300, 30_000)
    det = x % 8  # the token decides the expert: MI = H(expert) = 3 bits
    ind = rng.integers(0, 8, 30_000)  # no link: MI is the estimator's bias only
    assert mutual_information(x, det) == pytest.approx(3.0, abs=2e-3)
    bias = chance_information(x, ind)
    assert 0 < bias < 0.2 and mutual_information(x, ind) == pytest.approx(bias, abs=0.02)
    tr = TextRouting(x, (0, 1), np.stack([det[:, None], ind[:, None]]).astype(np.int16), 8)
    s = {r["layer"]: r for r in specialisation(tr)}
    assert s[0]["specialisation"] > 0.9 and abs(s[1]["specialisation"]) < 0.01
    assert s[0]["MI above chance (bits)"] == pytest.approx(s[0]["MI (bits)"] - s[0]["chance MI (bits)"])
    collapsed = np.where(rng.random(30_000) < 0.999, 0, x % 8)  # nearly every token to expert 0
    tr = TextRouting(x, (0,), collapsed[None, :, None].astype(np.int16), 8)
    assert abs(specialisation(tr)[0]["specialisation"]) < 0.01  # near 0, not a ratio of two tiny numbers


def test_top_tokens_and_shares_by_hand():
    ids = np.array([5, 5, 5, 9, 9, 2])
    choices = np.array([[[0, 1], [0, 1], [1, 0], [1, 2], [1, 2], [2, 0]]], dtype=np.int16)  # one layer, top-2
    tr = TextRouting(ids, (3,), choices, 3)
    per = {r["expert"]: r for r in top_tokens(tr, 3, n=2)}
    assert per[0]["selections"] == 4 and per[0]["tokens"] == [(5, 3, 1.0), (2, 1, 1.0)]
    assert per[1]["tokens"] == [(5, 3, 1.0), (9, 2, 1.0)] and per[1]["load share"] == pytest.approx(5 / 12)
    assert per[2]["tokens"] == [(9, 2, 1.0), (2, 1, 1.0)]
    p, top = token_expert_shares(tr, 3, tokens=2)
    assert list(top) == [5, 9] and p.tolist() == [[2 / 3, 1 / 3, 0], [0, 1, 0]]
    b = load_balance(tr)[0]
    assert b["never_chosen"] == 0 and b["max_over_mean"] == pytest.approx(5 / 4)


def test_bad_picks_are_one_line_errors():
    tr = TextRouting(np.array([1, 2]), (0,), np.zeros((1, 2, 1), dtype=np.int16), 4)
    for call in (
        lambda: top_tokens(tr, 7),
        lambda: top_tokens(tr, 0, n=0),
        lambda: mutual_information([1], [1, 2]),
        lambda: sp.routing_of("gpt2"),
        lambda: sp.routing_of("no-such-model"),
        lambda: sp.routing_of(sp.zoo_moe()[0].key, "half-trained"),
    ):
        with pytest.raises(ArchLabError) as e:
            call()
        assert "\n" not in str(e.value) and str(e.value)


def test_router_kind_follows_the_arch_spec_not_the_name():
    for key in MOE_KEYS:
        cfg = catalog.raw_config(key)
        kind, coef = sp.router_kind(cfg)
        if arch_spec(key).moe.bias_corrected:
            assert kind == sp.AUX_FREE and coef == 0
        else:
            assert kind in (sp.AUX, sp.NONE) and (coef > 0) == (kind == sp.AUX)
    assert {sp.router_kind(catalog.raw_config(k))[0] for k in MOE_KEYS} >= {sp.AUX, sp.AUX_FREE}


# ----------------------------------------------------------------- the shipped zoo


@pytest.fixture(scope="module")
def zoo_moe():
    models = sp.zoo_moe()
    assert zoo.zoo_dir().name == "zoo" and zoo.models(), "the trained zoo must ship in assets/zoo"
    assert models, "the shipped zoo has no mixture-of-experts miniature"
    return models


def test_the_text_is_a_fixed_slice_of_the_validation_split():
    from backend.train.data import corpus_data

    text = sp.routing_text()
    val = corpus_data().validation
    assert text.shape == (sp.WINDOWS, sp.seq_len())
    starts = [
        int(
            np.flatnonzero(
                np.all(np.lib.stride_tricks.sliding_window_view(val, text.shape[1])[:: text.shape[1]] == row, axis=1)
            )[0]
        )
        for row in text[[0, -1]]
    ]
    assert starts[0] == 0 and starts[1] > 0.9 * (len(val) // text.shape[1])  # spread to the Bible at the end


def test_trained_routers_specialise_more_than_untrained(zoo_moe):
    """Over the zoo's MoE miniatures (each beside its own initial weights, seed fixed, same text), trained routers
    carry more information about the token than untrained ones. Not every model: at initialisation the residual
    stream is mostly the token's embedding, so random routers are already token-determined, and in the shipped zoo
    Kimi K2 (0.230 vs 0.249) and Qwen3-Next (0.403 vs 0.491) stay below their initial weights (the Routing page
    shows it); the zoo mean is 0.356 vs 0.256."""
    table = sp.specialisation_table([m.key for m in zoo_moe])
    summary = sp.specialisation_summary(table)
    trained, untrained = summary["specialisation, trained"], summary["specialisation, untrained"]
    assert len(summary) == len(zoo_moe) and trained.notna().all() and untrained.notna().all()
    assert trained.mean() > untrained.mean() + 0.05, summary.to_string()
    assert (trained > untrained).sum() > len(summary) / 2, summary.to_string()
    assert (table["chance MI (bits)"] > 0).all() and (table["MI (bits)"] <= table["expert entropy (bits)"] + 1e-9).all()
    from backend.arch.architecture import resolve
    from backend.live.specialisation import route_text

    m, text = zoo_moe[0], sp.routing_text()[:4]  # fixed seed: two fresh untrained twins route alike
    a, b = (route_text(sp._model(m, sp.UNTRAINED), resolve(m.config).spec, text) for _ in range(2))
    assert np.array_equal(a.choices, b.choices)


def test_untrained_twin_is_the_trainers_initialisation(zoo_moe):
    """The untrained twin has the trained miniature's config and tensors, with exactly the weights the trainer
    initialises that config with at the zoo's seed (what training started from)."""
    import types

    import torch

    from backend.arch.architecture import resolve
    from backend.train.trainer import build_model

    for m in zoo_moe:
        twin, trained = sp._model(m, sp.UNTRAINED), sp._model(m, sp.TRAINED)
        start = build_model(types.SimpleNamespace(arch=resolve(m.config)), sp.untrained_seed(), torch.device("cpu"))
        pa, pt, ps = dict(twin.named_parameters()), dict(trained.named_parameters()), dict(start.named_parameters())
        assert pa.keys() == pt.keys() == ps.keys() and all(pa[n].shape == pt[n].shape for n in pa)
        assert all(torch.equal(pa[n], ps[n]) for n in pa), m.label
        assert any(not torch.equal(pa[n], pt[n].float()) for n in pa)
    assert sp.untrained_seed() == zoo.index()["seeds"][0]  # the seed of the shipped checkpoints


def test_top_tokens_agree_with_a_recomputation(zoo_moe):
    """Route 8 windows one at a time through the runtime's trained miniature with the Playground's recorder,
    count (expert, token) pairs with pandas, and compare with the batched numpy counts."""
    import torch

    from backend.live import runtime

    m = zoo_moe[-1]
    text = sp.routing_text()[:8]
    lm = runtime.load(runtime.ModelRequest(m.key, mode="trained", device="cpu"))
    trace = routing.RoutingTrace.for_spec(lm.spec)
    with lm.lock, routing.RoutingRecorder(lm.model, lm.spec) as rec, torch.inference_mode():
        for step, window in enumerate(text):
            lm.model(input_ids=torch.from_numpy(window[None].astype(np.int64)), use_cache=False)
            trace.add(rec.collect(step, window.tolist()))
    df = routing.token_layer_experts(trace)
    tr = sp.routing_of(m.key, sp.TRAINED, text)
    for layer in m.layers:
        counts = df[df["layer"] == layer].groupby(["expert", "token_id"]).size()
        for row in top_tokens(tr, layer, n=5):
            e = row["expert"]
            mine = [(t, c) for t, c, _ in row["tokens"]]
            theirs = (
                counts.loc[e].reset_index().set_axis(["token", "n"], axis=1) if e in counts.index.levels[0] else None
            )
            if theirs is None:
                assert mine == []
                continue
            theirs = theirs.sort_values(["n", "token"], ascending=[False, True]).head(5)
            assert mine == list(zip(theirs["token"].astype(int), theirs["n"].astype(int))), (layer, e)
            assert row["selections"] == int(counts.loc[e].sum())
        occurrences = pd.Series(text.ravel()).value_counts()
        for row in top_tokens(tr, layer, n=3):
            for t, c, share in row["tokens"]:
                assert share == pytest.approx(c / occurrences[t])


def test_balance_table_equals_a_recomputation(zoo_moe):
    bal = sp.balance_table(zoo_moe[:1])
    m = zoo_moe[0]
    tr = sp.routing_of(m.key)
    load = np.stack(
        [np.bincount(tr.choices[r].ravel().astype(int), minlength=m.num_experts) for r in range(len(m.layers))]
    )
    assert load.sum() == tr.token_ids.size * m.top_k * len(m.layers)
    mine = bal[bal["weights"] == sp.TRAINED].set_index("layer")
    for r, layer in enumerate(m.layers):
        x = load[r].astype(float)
        assert mine.loc[layer, "cv"] == pytest.approx(x.std() / x.mean())
        assert mine.loc[layer, "max_over_mean"] == pytest.approx(x.max() / x.mean())
        assert mine.loc[layer, "router"] == m.router
    summary = sp.balance_summary(bal)
    assert set(summary["weights"]) == {sp.TRAINED, sp.UNTRAINED}


def test_routing_is_cached_on_disk_and_reads_back_equal(zoo_moe):
    m = zoo_moe[0]
    text = sp.routing_text()[:2]
    first = sp.routing_of(m.key, sp.UNTRAINED, text)
    key = sp._cache_key(m, sp.UNTRAINED, text)
    back = sp._read(sp._cache_file(key))
    assert back is not None and back.layers == first.layers and np.array_equal(back.choices, first.choices)
    assert sp.is_cached(m.key, sp.UNTRAINED, text)


def test_charts_draw_the_tables(zoo_moe):
    m = zoo_moe[0]
    table = sp.specialisation_table([m.key])
    fig = spc.specialisation_by_layer(table, "t")
    assert [t.name for t in fig.data] == [spc.WEIGHT_NAMES[sp.TRAINED], spc.WEIGHT_NAMES[sp.UNTRAINED]]
    assert list(fig.data[0].y) == list(table[table["weights"] == sp.TRAINED]["specialisation"])
    shares = sp.shares(m.key, m.layers[0], tokens=10)
    heat = spc.expert_given_token(shares, m.layers[0], "t")
    assert np.allclose(np.asarray(heat.data[0].z).sum(axis=1), 1.0)  # every token's first choice is one expert
    bal = spc.balance_by_router(sp.balance_table(zoo_moe[:1]), "t")
    assert {t.name for t in bal.data} == set(spc.WEIGHT_NAMES.values())
