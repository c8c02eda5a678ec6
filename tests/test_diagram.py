"""Block diagrams: elements follow the spec, diff finds what differs, figures share one scale."""

from backend.arch.architecture import arch_spec
from backend.present import diagram
from backend.present.colors import HIGHLIGHT, PALETTE, model_colors


def ids(key):
    return [e.id for e in diagram.elements(arch_spec(key))]


def test_elements_follow_norm_placement_and_positions():
    assert "pos_embedding" in ids("gpt2") and "pos_embedding" not in ids("qwen3-4b")
    olmo = ids("olmo2-7b")
    assert "norm_attn_post" in olmo and "norm_attn_pre" not in olmo
    gemma = ids("gemma3-27b")
    assert {"norm_attn_pre", "norm_attn_post", "norm_mlp_pre", "norm_mlp_post"} <= set(gemma)
    assert [i for i in diagram.ORDER if i in gemma] == gemma  # drawn in the canonical order


def test_attention_and_moe_text():
    ds = {e.id: dict(e.lines) for e in diagram.elements(arch_spec("deepseek-v3"))}
    assert "Multi-head latent" in ds["attention"]["kind"]
    assert (
        "kv 512" in ds["attention"]["mla"] and "q 1536" in ds["attention"]["mla"] and "33%" in ds["attention"]["rope"]
    )
    assert ds["mlp"]["experts"] == "256 routed experts, top-8"
    assert ds["mlp"]["dense"] == "dense MLP: 3/61 layers"
    gemma = {e.id: dict(e.lines) for e in diagram.elements(arch_spec("gemma3-27b"))}
    assert gemma["attention"]["window"] == "sliding window 1,024 tok, 52/62 layers"
    scout = {e.id: dict(e.lines) for e in diagram.elements(arch_spec("llama4-scout"))}
    assert scout["attention"]["nope"] == "NoPE (no rotation): 12/48 layers"
    assert scout["lm_head"]["tied"] == "own weight matrix"


def test_diff():
    assert diagram.diff([arch_spec("gpt2")]) == {}
    assert diagram.diff([arch_spec("gpt2"), arch_spec("gpt2")]) == {}
    d = diagram.diff([arch_spec("gpt2"), arch_spec("gpt2-xl")])
    assert d["block"] == {"layers"} and "heads" in d["attention"] and d["mlp"] == {"width"}
    assert "norm_attn_pre" not in d and "final_norm" not in d and "rope" not in d["attention"]
    d2 = diagram.diff([arch_spec("qwen3-4b"), arch_spec("olmo2-7b")])
    assert d2["norm_attn_pre"] == {"*"} and d2["norm_attn_post"] == {"*"}  # pre vs post norm
    assert "qk_norm" in d2["attention"]


def _highlighted(fig):
    return [s for s in fig.layout.shapes if s.line and s.line.color == HIGHLIGHT]


def test_comparison_figures_share_scale_and_highlight():
    keys = ["gpt2", "qwen3-30b-a3b", "gemma3-27b"]
    figs = diagram.comparison_figures({k: arch_spec(k) for k in keys}, model_colors(keys))
    heights = {f.layout.height for f in figs.values()}
    ranges = {tuple(f.layout.yaxis.range) for f in figs.values()}
    assert len(heights) == 1 and len(ranges) == 1
    for f in figs.values():
        assert _highlighted(f)
        assert any("differs" in (a.text or "") for a in f.layout.annotations)
    alone = diagram.block_figure(arch_spec("gpt2"), "GPT-2")
    assert not _highlighted(alone) and not any("differs" in (a.text or "") for a in alone.layout.annotations)
    assert alone.layout.height < figs["gpt2"].layout.height  # the shared scale makes room for the others


def test_pattern_strip_has_a_cell_per_layer_and_row():
    s = arch_spec("gemma3-27b")
    fig = diagram.block_figure(s)
    cells = [sh for sh in fig.layout.shapes if sh.type == "rect" and sh.line.width == 0 and sh.xref != "paper"]
    assert len(cells) == 3 * s.num_layers
    hover = fig.data[0].hovertext
    assert (
        "layer 5: full attention, RoPE, dense MLP" in hover and "layer 0: sliding attention, RoPE, dense MLP" in hover
    )


def test_model_colors_are_distinct_and_stable():
    a = model_colors(["gpt2", "deepseek-v3", "qwen3-30b-a3b"])
    b = model_colors(["qwen3-30b-a3b", "gpt2"])
    assert a["gpt2"] == b["gpt2"] and a["qwen3-30b-a3b"] == b["qwen3-30b-a3b"]
    assert len(set(a.values())) == 3 and set(a.values()) <= set(PALETTE)
    c = model_colors(["gpt2", "custom:mine", "local:/x/y"])
    assert len(set(c.values())) == 3 and c["gpt2"] == a["gpt2"]
