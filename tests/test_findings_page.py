"""The Findings page: its static figures against the catalog's exact counts and hand formulas, its tables and
verdicts from the shipped evidence, the HTML report, the hook that keeps an ablation started for a claim as that
claim's re-run (a tiny run), and the page through AppTest (every claim with its source, evidence and verdict; a
re-run drawn beside the shipped evidence)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from backend.arch import memory
from backend.arch.architecture import resolve
from backend.arch.errors import ArchLabError
from backend.arch.variants import make_variant
from backend.present import ablation as ab
from backend.present import findings as fd
from backend.present import findings_charts as fc
from backend.train import findings as F
from backend.train.recipe import preset
from backend.train.runner import TrainingRun

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def _static(name: str):
    s = fd.static_evidence(name)
    return s, s.table.set_index(s.table.columns[0])


# ----------------------------------------------------------------- static evidence


def test_kv_bytes_per_token_of_each_attention_kind_are_exact():
    s, t = _static("mla-attention")
    col = "KV bytes per token (bf16)"
    layers, heads, kv_heads, head = 32, 32, 8, 128  # Llama 3 8B: 32 layers, 32 query heads, 8 KV heads × 128
    assert t.loc["mha", col] == layers * heads * 2 * head * 2
    assert t.loc["gqa:8", col] == layers * kv_heads * 2 * head * 2 == memory.kv_cache("llama3-8b", 1).per_token_bytes
    assert t.loc["mqa", col] == layers * 1 * 2 * head * 2
    assert t.loc["mla", col] == layers * (512 + 64) * 2  # the compressed latent (rank 512) + the shared RoPE key (64)
    assert t.loc["mla", "cached elements per token, one layer"] == 576
    assert t.loc["gqa:8", "the base's own"] and t.loc["gqa:8", "total parameters"] == 8_030_261_248
    assert t.loc["mla", "share of mha"] == pytest.approx(576 / 8192)
    for value in ("mha", "mqa", "mla"):  # every variant's row is its own config's exact figures
        arch = resolve(make_variant("llama3-8b", {"attention": value}).config)
        assert t.loc[value, "total parameters"] == arch.counts.total
        assert t.loc[value, col] == memory.kv_cache(arch, 1).per_token_bytes
    assert list(s.chart) == [col]


def test_kv_memory_of_the_sliding_window_patterns_is_exact():
    _, t = _static("sliding-windows")
    col = "KV cache at 32,768 tokens (bf16, bytes)"
    per_layer_token = 16 * 2 * 128 * 2  # Gemma 3 27B: 16 KV heads × (key + value) × 128, bf16
    assert t.loc["global", col] == 62 * per_layer_token * 32_768
    assert (
        t.loc["5:1", col]
        == (10 * 32_768 + 52 * 1_024) * per_layer_token
        == memory.kv_cache("gemma3-27b", 32_768).total_bytes
    )
    assert t.loc["sliding", col] == 62 * per_layer_token * 1_024
    assert (t.loc["5:1", "global layers"], t.loc["5:1", "sliding layers"], t.loc["5:1", "window"]) == (10, 52, 1024)
    assert t.loc["5:1", "share of all global"] == pytest.approx((10 * 32_768 + 52 * 1_024) / (62 * 32_768))
    assert (t["weights (bf16, bytes)"] == memory.weight_bytes("gemma3-27b")).all()


def test_moe_and_dense_parameters_are_the_exact_counts():
    _, t = _static("moe-dense")
    assert t.loc["moe:256:8:1", "total parameters"] == 671_026_404_352  # DeepSeek-V3 as transformers builds it
    assert t.loc["moe:256:8:1", "active parameters"] == resolve("deepseek-v3").counts.active
    dense = resolve(make_variant("deepseek-v3", {"ffn": "dense"}).config).counts
    assert t.loc["dense", "total parameters"] == t.loc["dense", "active parameters"] == dense.total == dense.active


def test_the_page_modules_do_not_import_torch():
    code = (
        "import sys; import backend.present.findings, backend.present.findings_charts, "
        "backend.present.findings_report; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ----------------------------------------------------------------- shipped evidence


def test_the_shipped_verdicts_are_the_ones_the_page_computes():
    shipped = [p for p in sorted(F.ROOT.glob("*/*/verdict.json"))]
    assert shipped, "no shipped evidence"
    for path in shipped:
        claim, mode = path.parts[-3], path.parts[-2]
        t = fd.trained(claim, mode, fd.SHIPPED)
        assert t.verdict["verdict"] == json.loads(path.read_text())["verdict"], claim
        table = fd.comparisons_table([t])
        judged = table[table["expected"] != "no direction"]
        for _, r in judged.iterrows():  # each verdict follows from its interval
            if r["verdict"].startswith("no verdict"):
                continue
            holds_zero = r["CI low"] <= 0 <= r["CI high"]
            if r["expected"] == "no difference":
                assert (r["verdict"] == "supports") == holds_zero
            elif holds_zero:
                assert r["verdict"] == "inconclusive at this scale"
            else:
                side = "a lower than b" if r["CI high"] < 0 else "a higher than b"
                assert r["verdict"] == ("supports" if side == r["expected"] else "contradicts")


def test_the_tables_of_one_claim():
    c = F.claim("olmo2-norm")
    t = fd.trained(c.name, "full", fd.SHIPPED)
    sanity = fd.sanity_table(c, [t])
    assert list(sanity["holds"]) == ["holds"] and "positions" not in sanity["numbers"][0]
    shown, exact = fd.cells_table([t], "norm-qk")
    assert len(shown) == 4 and list(shown["evidence"].unique()) == ["shipped (full)"]
    cell = next(x for x in t.evidence["norm-qk"].summary["cells"] if x["name"] == "norm=pre, qk_norm=off")
    row = exact.set_index("cell").loc["norm=pre, qk_norm=off"]
    assert row["loss at best lr"] == cell["best"]["mean"] and row["LR sensitivity"] == cell["lr_sensitivity"]["mean"]
    assert shown.loc[0, "loss at best lr (95 % CI)"] == ab.with_ci(
        cell["best"]["mean"], cell["best"]["low"], cell["best"]["high"]
    )
    recipe = fd.recipe_table([t], "norm-qk").set_index("field")["shipped (full)"]
    assert recipe["peak learning rates"] == "0.001, 0.004, 0.017, 0.07, 0.3" and recipe["seeds"] == "0, 1, 2"
    assert recipe["tokens per run"] == "4,000,000" and recipe["device"].startswith("cuda")
    assert fd.recipe_changes(t, "norm-qk") == []  # the shipped evidence is the claim's full recipe
    comps = fd.comparisons_display(fd.comparisons_table([t]))
    assert len(comps) == len(c.comparisons) and fd.NOT_JUDGED in set(comps["verdict"])
    fig = fc.loss_vs_lr([t], "norm-qk", fd.chart_title(c, "full", "norm-qk"))
    assert {tr.legendgroup for tr in fig.data} >= {x["name"] for x in t.evidence["norm-qk"].summary["cells"]}
    assert fd.uses_stability(c, "norm-qk") and not fd.uses_stability(F.claim("nope-layers"), "positions")


def test_links_and_commands_re_run_a_claim():
    c = F.claim("nope-layers")
    q = fd.rerun_params(c, "positions", "quick")
    assert (q["mode"], q["claim"], q["ablation"], q["fmode"]) == ("ablation", "nope-layers", "positions", "quick")
    spec = ab.decode_spec(q["spec"])
    assert spec.to_json() == F.ablation_spec(c, "positions", "quick", "auto").to_json()
    assert fd.cli_line(c, "quick") == "python -m backend findings --claim nope-layers --device auto --quick"
    assert fd.cli_line(c, "full") == "python -m backend findings --claim nope-layers --device auto"
    assert fd.finding_tag({}) is None
    assert fd.finding_tag(q) == {"claim": "nope-layers", "ablation": "positions", "mode": "quick"}
    for bad, words in (
        ({"claim": "nope"}, "unknown claim"),
        ({"claim": "nope-layers", "ablation": "x"}, "no ablation"),
        ({"claim": "nope-layers", "ablation": "positions", "fmode": "slow"}, "not 'slow'"),
    ):
        with pytest.raises(ArchLabError, match=words):
            fd.finding_tag(bad)
    tag = fd.finding_tag(q)
    assert fd.tag_problem(spec, tag) == ""
    other = replace(spec, vary=(("positions", ("nope:3", "rope")),))
    assert "no longer tests the claim" in fd.tag_problem(other, tag)


def test_the_html_report_holds_every_claim_and_its_verdicts():
    from backend.present.findings_report import report_html

    html = report_html().decode()
    assert html.count("Plotly.newPlot") >= 5 and html.count("<script type='text/javascript'>") == 1  # plotly.js once
    for c in F.claims():
        assert f"<section id='{c.name}'>" in html and f"href='#{c.name}'" in html
        assert json.dumps(c.title)[1:-1].replace("'", "&#x27;") in html
        for mode in F.MODES:
            t = fd.trained(c.name, mode, fd.SHIPPED)
            assert f">{fd.verdict_text(t)}</span>" in html
    assert "python -m backend findings --claim moe-dense --device auto --quick" in html


# ----------------------------------------------------------------- a re-run started for a claim

#: nope-layers' quick ablation with a recipe small enough for a test: 2 cells × 1 learning rate × 3 seeds, 16 steps
#: a run (the final loss on the whole held-out split takes most of its time)
RERUN = replace(
    F.ablation_spec(F.claim("nope-layers"), "positions", "quick", "cpu"),
    lrs=(1e-2,),
    recipe=preset("tiny", budget=100_000, layers=4, batch=4, seq_len=32, tokens=2048, eval_windows=4, data="corpus"),
)


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    os.environ["ARCHLAB_RUNS_DIR"] = str(root)
    try:
        p, _ = ab.prepare(RERUN)
        run = TrainingRun(p.run, root=root, sizer=p.sizer())
        tag = {"claim": "nope-layers", "ablation": "positions", "mode": "quick"}
        ab.record(run.folder, p, tag)
        run.start()
        run.join(600)
        assert run.view().status == "finished", run.view().message
        assert ab.finding_of(run.folder) == tag
        yield run, root
    finally:
        os.environ.pop("ARCHLAB_RUNS_DIR")


def test_an_ablation_started_for_a_claim_is_kept_as_its_re_run(rerun):
    run, root = rerun
    out = root / "findings" / "nope-layers" / "quick"
    assert not out.exists()
    summary = ab.summary_of(run.folder, run.view().results, finished=True)  # what the page does when the run ends
    assert {p.name for p in (out / "positions").iterdir()} == {
        "spec.json",
        "summary.json",
        "results.csv",
        "probes.csv",
        "curves.csv",
    }
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["claim"] == "nope-layers" and verdict["mode"] == "quick" and verdict["ablations"] == ["positions"]
    t = fd.trained("nope-layers", "quick", fd.RERUN)
    assert t.verdict["verdict"] == verdict["verdict"] and t.folder == out
    kept = t.evidence["positions"].summary
    assert kept["run_id"] == run.id and kept["device"] == "cpu" and kept["status"] == "finished"
    assert kept["cells"] == summary["cells"]
    assert len(t.evidence["positions"].results) == 2 * len(RERUN.seeds) and not t.evidence["positions"].curves.empty
    changes = fd.recipe_changes(t, "positions")
    assert (
        "tokens 2,048 (the claim's: 600,000)" in changes and "learning rates 0.01 (the claim's: 0.003, 0.01)" in changes
    ), changes


def test_a_re_run_is_drawn_beside_the_shipped_evidence(rerun, tmp_path):
    run, _ = rerun
    summary = ab.summary_of(run.folder, run.view().results, finished=True)
    tag = {"claim": "nope-layers", "ablation": "positions", "mode": "full"}  # kept beside the shipped full evidence
    verdict = fd.save_rerun(run.folder, summary, run.view().results, tag, root=tmp_path)
    shipped = fd.trained("nope-layers", "full", fd.SHIPPED)
    again = fd.Trained(
        "nope-layers", "full", fd.RERUN, tmp_path, F.load_evidence("nope-layers", "full", tmp_path), verdict
    )
    fig = fc.loss_vs_lr([shipped, again], "positions", "beside")
    lines = {tr.name: tr.line.dash for tr in fig.data if tr.name}
    assert lines["positions=rope"] is None and lines["positions=rope · re-run"] == "dash"
    assert fig.layout.title.text == f"beside (shipped: 3 seeds, re-run: {len(RERUN.seeds)} seeds)"
    comps = fd.comparisons_table([shipped, again])
    assert list(comps["evidence"]) == ["shipped (full)", "re-run (full)"]
    assert comps["verdict"].iloc[1] == verdict["comparisons"][0]["verdict"]
    shown, _ = fd.cells_table([shipped, again], "positions")
    assert list(shown["evidence"]) == ["shipped (full)"] * 2 + ["re-run (full)"] * 2
    recipe = fd.recipe_table([shipped, again], "positions").set_index("field")
    assert list(recipe.columns) == ["shipped (full)", "re-run (full)"]
    assert recipe.loc["tokens per run"].tolist() == ["5,000,000", "2,048"]
    assert recipe.loc["recipe"].tolist() == [
        "full recipe (one GPU)",
        "full recipe (one GPU), changed (see the note above)",
    ]
    assert not any(x.startswith(("lr ", "seed ")) for x in fd.recipe_changes(again, "positions"))
    assert recipe.loc["device", "re-run (full)"].startswith("cpu") and recipe.loc["run", "re-run (full)"] == run.id
    bad = dict(tag, claim="no-such-claim")  # a tag that fits no claim keeps nothing
    assert fd.save_rerun(run.folder, summary, run.view().results, bad, root=tmp_path / "x") is None
    assert not (tmp_path / "x").exists()


def test_the_page_draws_every_claim_and_the_re_run_beside_the_shipped_evidence(rerun):
    run, root = rerun
    if not (root / "findings" / "nope-layers" / "quick" / "verdict.json").is_file():
        ab.summary_of(run.folder, run.view().results, finished=True)
    os.environ["ARCHLAB_RUNS_DIR"] = str(root)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/findings.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Findings"
    claims = F.claims()
    assert [h.value for h in at.header] == [c.title for c in claims]
    text = "\n".join(m.value.replace("\\", "") for m in at.markdown)
    summary = next(m.value for m in at.markdown if m.value.startswith("| claim |")).replace("\\", "")
    rerun_verdict = fd.trained("nope-layers", "quick", fd.RERUN).verdict["verdict"]
    for c in claims:
        assert f"(#{c.name})" in summary and c.source["label"] in text and c.source["cite"] in text
        for mode in F.MODES:
            assert fd.short_verdict(fd.verdict_text(fd.trained(c.name, mode, fd.SHIPPED))) in summary
    assert f"re-run: :{fd.verdict_color(rerun_verdict)}-badge[{rerun_verdict}]" in summary
    infos = [i.value for i in at.info]
    for mode in F.MODES:  # a recipe with neither shipped evidence nor a re-run says so, with its command
        missing = [c for c in claims if not fd.mode_evidence(c.name, mode).runs]
        shown = [i for i in infos if i.startswith(f"Not run under the {fd.MODE_LABELS[mode]} yet")]
        assert len(shown) == len(missing) and all(any(fd.cli_line(c, mode) in i for i in shown) for c in missing)
    assert fd.mode_evidence("nope-layers", "quick").runs  # its re-run
    badges = [m.value for m in at.markdown if "-badge[" in m.value]
    assert any(rerun_verdict.replace("(", "\\(") in b or rerun_verdict in b for b in badges)
    comps = [d.value for d in at.dataframe if "Δ (95 % CI)" in d.value.columns]
    assert any("re-run (quick)" in set(d["evidence"]) for d in comps)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert any(
        t.startswith("nope-layers / positions, quick recipe") and f"re-run: {len(RERUN.seeds)} seeds" in t
        for t in titles
    )
    assert any(t.startswith("KV cache per token") for t in titles)  # the static figures were drawn last
    links = [p.proto for p in at.get("page_link")]
    assert len(links) == sum(len(c.ablations) for c in claims) and all(p.page == "experiments" for p in links)
    assert any(b.proto.label == "HTML report" for b in at.get("download_button"))


def test_the_experiments_page_says_which_claim_a_link_re_runs(rerun):
    run, root = rerun
    os.environ["ARCHLAB_RUNS_DIR"] = str(root)
    q = fd.rerun_params(F.claim("nope-layers"), "positions", "quick")
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in q.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/experiments.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("A re-run of the finding" in i.value and "NoPE" in i.value for i in at.info)
    at.multiselect(key="abl_vals_smollm3-3b_positions").set_value(["nope:3", "rope"]).run()
    assert any("no longer tests the claim" in w.value.replace("\\", "") for w in at.warning)
    bad = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in {**q, "claim": "no-such-claim"}.items():
        bad.query_params[k] = v
    bad.run()
    bad.switch_page("views/experiments.py").run()
    assert any("unknown claim" in e.value.replace("\\", "") for e in bad.error)
    attached = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    attached.query_params["run"] = run.id
    attached.run()
    attached.switch_page("views/experiments.py").run()
    assert not attached.exception, [e.value for e in attached.exception]
    assert any("A re-run of the finding" in i.value for i in attached.info)


def test_the_summary_badges_are_short_and_the_section_keeps_the_whole_verdict():
    long = "no verdict: the task was not shown learnable (ffn: every cell ends below — not met by ffn=dense (x))"
    assert fd.short_verdict(long) == "no verdict: task not shown learnable"
    assert fd.short_verdict(long + " (not run: recall)") == "no verdict: task not shown learnable (not run: recall)"
    assert fd.short_verdict("mixed: a vs b (loss): supports; c vs d (loss): contradicts") == "mixed (see the claim)"
    partly = "inconclusive at this scale (no verdict on recall: the task was not shown learnable)"
    assert fd.short_verdict(partly) == "inconclusive at this scale (no verdict on recall: not learnable)"
    for v in ("supports", "contradicts (not run: recall)", "inconclusive at this scale", "not run"):
        assert fd.short_verdict(v) == v
