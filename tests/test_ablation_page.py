"""The Experiments page's Ablation mode: its view models (the link codec, the form, the preview with cells left
out, the summary from a run folder) and the page through AppTest (the form and its preview, one error line per bad
input, a link that pre-fills every field, the results of a finished ablation re-attached from disk)."""

import json
import os
import shutil

import pytest
from test_experiments_page import page

from backend.arch.errors import ArchLabError
from backend.arch.variants import make_variant
from backend.present import ablation as ab
from backend.train import ablation as abl
from backend.train.recipe import preset
from backend.train.runner import TrainingRun

#: a 2 × 2 whose every field differs from the form's defaults (a config field and a recipe field among the axes)
LINKED = abl.AblationSpec(
    "olmo2-7b",
    (("qk_norm", ("off", "on")), ("norm", ("pre", "post")), ("rms_norm_eps", (1e-6, 1e-5)), ("warmup", (0.01, 0.1))),
    (1e-3, 2e-2),
    (0, 1),
    preset(
        "tiny",
        budget=100_000,
        tokens=20_480,
        batch=8,
        seq_len=64,
        layers=2,
        weight_decay=0.05,
        z_loss=1e-4,
        eval_windows=4,
    ),
    "cpu",
    "olmo 2 question",
)
#: the tiny ablation trained for the results tests: 2 cells × 2 learning rates × 2 seeds, 16 steps each
TINY = abl.AblationSpec(
    "olmo2-7b",
    (("qk_norm", ("off", "on")),),
    (1e-3, 1e-2),
    (0, 1),
    preset("tiny", budget=50_000, layers=2, batch=4, seq_len=32, tokens=2048, eval_windows=4),
    "cpu",
)


def _errors(at) -> list[str]:
    """The page's error lines, markdown escapes removed."""
    return [e.value.replace("\\", "") for e in at.error]


def _table(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


# ----------------------------------------------------------------- view models


def test_the_link_carries_the_spec_exactly():
    query = ab.spec_query(LINKED)
    assert query.startswith("mode=ablation&spec=")
    encoded = query.split("spec=", 1)[1]
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded  # URL-safe, no padding
    assert ab.decode_spec(encoded).to_json() == LINKED.to_json()
    for bad in ("", "%%%", "bm90IGpzb24", ab.encode_spec(LINKED)[:-7]):
        with pytest.raises(ArchLabError) as e:
            ab.decode_spec(bad)
        assert "\n" not in str(e.value)


def test_the_form_round_trips_a_spec():
    f = ab.form_of(LINKED)
    assert f.axes == (("qk_norm", ("off", "on")), ("norm", ("pre", "post")))
    assert f.free == "rms_norm_eps=1e-06, 1e-05\nwarmup=0.01, 0.1"
    assert (f.lrs, f.seeds) == ("0.001, 0.02", "0, 1")
    spec, errors = ab.build_spec(f.base, f.axes, f.free, f.lrs, f.seeds, f.recipe, f.device, f.name)
    assert not errors and spec.to_json() == LINKED.to_json()
    with pytest.raises(ArchLabError, match="config object"):
        ab.form_of(abl.AblationSpec({"model_type": "llama"}, (("qk_norm", ("on",)),)))


@pytest.mark.parametrize(
    "axes, free, lrs, seeds, expected",
    [
        ((("qk_norm", ("off", "on")),), "no_such_field=1,2", "1e-3", "0", "unknown axis 'no_such_field'"),
        ((("qk_norm", ("off", "maybe")),), "", "1e-3", "0", "is not a value of qk_norm"),
        ((("qk_norm", ()),), "", "1e-3", "0", "choose at least one value"),
        ((("qk_norm", ("off", "on")),), "", "1e-3, fast", "0", "learning rates must be comma-separated numbers"),
        (
            (("qk_norm", ("off", "on")),),
            "",
            ", ".join(f"{x}e-4" for x in range(1, 10)),
            ",".join(map(str, range(29))),
            "this grid trains 522 runs",
        ),
        ((), "", "1e-3", "0", "choose a component to vary"),
    ],
)
def test_bad_input_is_one_line_each(axes, free, lrs, seeds, expected):
    spec, errors = ab.build_spec("olmo2-7b", axes, free, lrs, seeds, preset("tiny"), "cpu")
    assert spec is None and len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], errors


def test_config_diff_names_the_changed_fields_and_patches():
    from backend.arch.architecture import resolve

    base = resolve("olmo2-7b").as_dict()
    assert ab.config_diff(base, make_variant("olmo2-7b", {"qk_norm": "off"}).config) == "patches + qk_norm_off"
    assert (
        ab.config_diff(base, make_variant("olmo2-7b", {"attention": "gqa:8"}).config) == "num_key_value_heads: 32 → 8"
    )
    assert ab.config_diff(base, make_variant("olmo2-7b", {"qk_norm": "on"}).config) == ""


def test_a_cell_that_cannot_meet_the_budget_is_left_out_and_the_rest_trains():
    spec = abl.AblationSpec(
        "olmo2-7b", (("ffn", ("dense", "moe:512:64:8")),), (1e-3,), (0, 1), preset("tiny", budget=100_000)
    )
    p, pv = ab.prepare(spec)
    assert [c.name for c in p.cells] == ["ffn=dense"] and p.cells[0].is_reference
    assert len(pv.left_out) == 1 and pv.left_out[0][0] == "ffn=moe:512:64:8"
    assert "cannot meet" in pv.left_out[0][1] and "\n" not in pv.left_out[0][1]
    assert [m["key"] for m in p.run.members] == [abl.run_key("ffn=dense", 1e-3, s) for s in (0, 1)]
    assert len(p.run.models) == 2  # the model stays: the kept cell is sized exactly as the preview showed
    assert pv.runs == 2 and list(pv.cells["cell"]) == ["ffn=dense"]
    assert abs(pv.cells.loc[0, "non-embedding active"] / 100_000 - 1) <= 0.05
    assert pv.quick_look.startswith("Quick look: 2 seed(s)")


def test_an_ablation_too_long_for_the_device_is_refused_with_its_estimate():
    spec = abl.AblationSpec(
        "olmo2-7b", (("qk_norm", ("off", "on")),), (1e-3, 1e-2), (0, 1, 2), preset("tiny", tokens=20_000_000), "cpu"
    )
    _, pv = ab.prepare(spec)
    assert pv.estimate["seconds"] > ab.MAX_HOURS * 3600
    assert pv.problem.startswith("this ablation would train for about") and "FLOP/s" in pv.problem
    assert "\n" not in pv.problem


def test_run_keys_parse_and_style_by_cell_lr_and_seed():
    keys = [
        abl.run_key(c, lr, s)
        for c in ("qk_norm=off, norm=pre", "qk_norm=on, norm=pre")
        for lr in (1e-3, 1e-2)
        for s in (0, 1)
    ]
    assert ab.parse_key(keys[3]) == ("qk_norm=off, norm=pre", 1e-2, 1)
    assert ab.parse_key("Llama 3 8B") is None
    st = ab.run_styles(keys)
    assert len(st.cells) == 2 and len(set(st.cells.values())) == 2
    assert st.colors[keys[0]] == st.colors[keys[2]] == st.cells["qk_norm=off, norm=pre"]  # seed 0, both lrs
    assert st.colors[keys[1]] != st.colors[keys[0]]  # seed 1: a lighter shade of the cell's colour
    assert st.dashes[keys[0]] == st.dashes[keys[1]] != st.dashes[keys[2]]  # one dash per learning rate
    assert st.legend() == "solid: lr 0.001, dash: lr 0.01"
    assert {st.groups[k] for k in keys[:4]} == {"qk_norm=off, norm=pre"}  # one legend entry per cell


# ----------------------------------------------------------------- a finished tiny ablation


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    os.environ["ARCHLAB_RUNS_DIR"] = str(root)
    p, _ = ab.prepare(TINY)
    run = TrainingRun(p.run, root=root, sizer=p.sizer())
    ab.record(run.folder, p)
    run.start()
    run.join(600)
    assert run.view().status == "finished", run.view().message
    yield run, p
    os.environ.pop("ARCHLAB_RUNS_DIR")


def test_the_summary_recomputed_from_disk_equals_the_live_one(finished, tmp_path):
    run, p = finished
    live = abl.summarize(p, run.view().results)
    copy = tmp_path / run.id
    shutil.copytree(run.folder, copy, ignore=shutil.ignore_patterns("models", "summary.json"))
    assert ab.spec_of(copy)[0].to_json() == TINY.to_json()
    disk = ab.summary_of(copy)
    assert (copy / "summary.json").is_file()  # written once the run has ended
    assert ab.headline(disk).equals(ab.headline(live))
    assert ab.grid_table(disk).equals(ab.grid_table(live))
    cli = tmp_path / "cli"  # a folder python -m backend ablate wrote: summary.json, no ablation.json
    shutil.copytree(copy, cli, ignore=shutil.ignore_patterns(ab.SPEC_FILE))
    assert ab.spec_of(cli) == (TINY, {}) and ab.summary_of(cli) == json.loads((copy / "summary.json").read_text())
    (cli / "summary.json").unlink()
    assert ab.spec_of(cli) is None and ab.summary_of(cli) is None  # no ablation recorded there
    table = ab.headline(live)
    off, on = table.iloc[0], table.iloc[1]
    assert (on["verdict"], off["reference"], on["reference"]) == ("reference", False, True)
    diff = live["comparisons"][0]["loss_difference"]
    assert off["Δ loss vs reference"] == pytest.approx(diff["mean"])
    assert off["Δ CI low"] <= off["Δ loss vs reference"] <= off["Δ CI high"]
    assert off["verdict"] == "too few seeds"  # 2 seeds: an interval, no verdict
    shown = ab.headline_display(table)
    assert (
        shown.loc[0, "loss at best lr (95 % CI)"]
        == f"{off['loss at best lr']:.4f} [{off['loss CI low']:.4f}, {off['loss CI high']:.4f}]"
    )


def test_a_finished_ablation_reattaches_with_its_results(finished):
    run, _ = finished
    summary = run.folder / "summary.json"
    summary.unlink(missing_ok=True)
    at = page(run=run.id)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    headline = _table(at, "Δ loss vs reference (95 % CI)")
    assert list(headline["cell"]) == ["qk_norm=off", "qk_norm=on"]
    assert headline.loc[1, "verdict"] == "reference" and headline.loc[0, "verdict"] == "too few seeds"
    grid = _table(at, "seeds' losses")
    assert len(grid) == 4 and set(grid["lr"]) == {1e-3, 1e-2}
    hashes = _table(at, "same batches for every cell and learning rate")
    assert list(hashes["seed"]) == [0, 1] and hashes["same batches for every cell and learning rate"].all()
    assert (hashes["runs"] == 4).all()
    shared = _table(at, "shared by every model").set_index("shared by every model")["value"]
    assert shared["seed"].startswith("per run: 0, 1") and "0.001, 0.01" in shared["schedule"]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert any(t.startswith("Final validation loss against the learning rate") for t in titles)
    assert "Stability while training" in titles and any(t.startswith("Stability per cell") for t in titles)
    assert any("Quick look: 2 seed(s)" in i.value.replace("\\", "") for i in at.info)
    assert json.loads(summary.read_text())["cells"][0]["name"] == "qk_norm=off"  # the page wrote it
    assert at.query_params["run"] == run.id


# ----------------------------------------------------------------- the form through AppTest


def test_the_ablation_mode_previews_its_cells():
    at = page(mode="ablation")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.segmented_control(key="ex_mode").value == "ablation"
    cells = _table(at, "config diff against the base")
    assert list(cells["cell"]) == ["qk_norm=on", "qk_norm=off"]  # the base's value first: the reference
    assert list(cells["reference"]) == [True, False]
    assert list(cells["config diff against the base"]) == ["(the base's own config)", "patches + qk_norm_off"]
    budget = preset("tiny").budget
    assert ((cells["non-embedding active"] / budget - 1).abs() <= 0.05).all()
    assert cells["non-embedding active"].iloc[1] < cells["non-embedding active"].iloc[0]  # no q/k norm weights
    assert any("= **18 runs**" in c.value for c in at.caption)
    assert any("Estimated training time" in c.value for c in at.caption)
    train = next(b for b in at.button if b.label == "Train the ablation")
    assert not train.disabled
    assert ab.decode_spec(at.query_params["spec"]).vary == (("qk_norm", ("on", "off")),)  # the link follows the form


def test_a_bad_axis_is_one_error_line():
    at = page(mode="ablation")
    at.text_area(key="abl_free").set_value("no_such_field=1,2").run()
    assert not at.exception
    assert len(at.error) == 1 and "unknown axis 'no_such_field'" in _errors(at)[0]
    assert not any(b.label == "Train the ablation" for b in at.button)


def test_cells_its_class_cannot_build_are_left_out_with_one_line_each():
    at = page(mode="ablation")
    at.multiselect(key="abl_axes").set_value(["qk_norm", "attention_pattern"]).run()
    at.multiselect(key="abl_vals_olmo2-7b_attention_pattern").set_value(["global", "sliding"]).run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 2 and all("cannot build attention_pattern=sliding" in e for e in errors)
    cells = _table(at, "config diff against the base")
    assert list(cells["cell"]) == ["qk_norm=on, attention_pattern=global", "qk_norm=off, attention_pattern=global"]
    assert next(b for b in at.button if b.label == "Train the ablation").disabled is False


def test_too_long_an_ablation_is_refused():
    at = page(mode="ablation")
    at.text_input(key="abl_tokens_tiny").set_value("20M").run()
    assert not at.exception
    assert len(at.error) == 1 and "would train for about" in _errors(at)[0]
    assert next(b for b in at.button if b.label == "Train the ablation").disabled


def test_a_link_prefills_every_field():
    encoded = ab.encode_spec(LINKED)
    at = page(mode="ablation", spec=encoded)
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="abl_base").value == "olmo2-7b"
    assert at.multiselect(key="abl_axes").value == ["qk_norm", "norm"]
    assert at.multiselect(key="abl_vals_olmo2-7b_qk_norm").value == ["off", "on"]
    assert at.multiselect(key="abl_vals_olmo2-7b_norm").value == ["pre", "post"]
    assert at.text_area(key="abl_free").value == "rms_norm_eps=1e-06, 1e-05\nwarmup=0.01, 0.1"
    assert at.selectbox(key="abl_lr_choice").value == "custom…"
    assert at.text_input(key="abl_lrs").value == "0.001, 0.02"
    assert at.text_input(key="abl_seeds").value == "0, 1"
    assert at.text_input(key="abl_name").value == "olmo 2 question"
    assert at.text_input(key="abl_budget_tiny").value == "100k"
    assert at.text_input(key="abl_tokens_tiny").value == "20.48k"
    assert at.selectbox(key="abl_device").value == "cpu"
    assert at.number_input(key="abl_z_tiny").value == pytest.approx(1e-4)
    rebuilt = ab.decode_spec(at.query_params["spec"])
    assert json.loads(rebuilt.to_json()) == json.loads(LINKED.to_json())  # the form rebuilt the link's spec exactly
    cells = _table(at, "config diff against the base")
    assert len(cells) == 16
    assert any("Quick look: 2 seed(s)" in i.value for i in at.info)


def test_a_bad_spec_link_is_one_line():
    at = page(mode="ablation", spec="bm90IGpzb24")
    assert not at.exception
    assert len(at.error) == 1 and "not valid JSON" in _errors(at)[0]
    assert ab.decode_spec(at.query_params["spec"]).base == "olmo2-7b"  # the default form took its place


def test_charts_mark_diverged_runs_and_group_the_legend_by_cell():
    import pandas as pd

    from backend.present import ablation_charts as abc
    from backend.present import training_charts as tc

    p = abl.plan(TINY)
    loss = {
        ("qk_norm=off", 1e-3): 6.6,
        ("qk_norm=off", 1e-2): 6.1,
        ("qk_norm=on", 1e-3): 6.5,
        ("qk_norm=on", 1e-2): 6.0,
    }
    rows = [
        {
            "model": abl.run_key(c, lr, s),
            "status": "finished",
            "val_loss": v + 0.01 * s,
            "init_loss": 7.6,
            "diverged": False,
        }
        for (c, lr), v in loss.items()
        for s in (0, 1)
    ]
    rows[3].update(val_loss=float("nan"), diverged=True)  # qk_norm=off, lr 1e-2, seed 1
    summary = abl.summarize(p, rows)
    styles = ab.run_styles([r["model"] for r in rows])
    fig = abc.loss_vs_lr(summary, styles.cells)
    crosses = [t for t in fig.data if t.marker.symbol == "x"]
    assert len(crosses) == 1 and list(crosses[0].x) == [1e-2] and list(crosses[0].y) == [7.6]
    assert crosses[0].text == ("1 diverged",)
    stars = {t.legendgroup: (t.x[0], t.y[0]) for t in fig.data if t.marker.symbol == "star"}
    assert stars == {"qk_norm=off": (1e-3, pytest.approx(6.605)), "qk_norm=on": (1e-2, pytest.approx(6.005))}
    assert fig.layout.yaxis.range[0] < 6.0 and fig.layout.yaxis.range[1] > 7.6  # the cross is inside the axis
    assert list(fig.layout.xaxis.ticktext) == ["0.001", "0.01"]
    metrics = pd.DataFrame(
        [
            {
                "model": r["model"],
                "step": s,
                "tokens": 128 * s,
                "grad_norm": 1.0 + s,
                "max_attn_logit": 2.0 * s if s % 2 else None,
                "log_z": None,
            }
            for r in rows
            for s in (1, 2, 3)
        ]
    )
    fig = tc.stability_curves(
        metrics, styles.colors, {r["model"]: r["model"] for r in rows}, styles.dashes, styles.groups
    )
    assert [t.name for t in fig.data if t.showlegend] == ["qk_norm=off", "qk_norm=on"]
    assert len(fig.data) == 16  # 8 runs × (gradient norm, attention logit); log Z was not sampled
    heat = abc.score_heatmaps(summary)
    assert [t.zmax for t in heat.data][:1] == [1.0]  # no spike measured: the scale does not paint zeros red
