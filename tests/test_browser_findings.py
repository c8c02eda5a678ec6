"""In a real Chromium: open the Findings page, follow the quick re-run link of SmolLM3's NoPE layers to the
Experiments page (its recipe made smaller in the link, as a visitor could), train it to the end there, and see its
result drawn on the Findings page beside the shipped evidence."""

import os
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from test_browser import ARTIFACTS, opened, served

from backend.present import ablation as ab
from backend.train.recipe import preset

#: the link's recipe, made small enough for a test: 2 cells × 1 learning rate × 3 seeds, 16 steps a run
SMALL = preset("tiny", budget=100_000, layers=4, batch=4, seq_len=32, tokens=2048, eval_windows=4, data="corpus")


@pytest.mark.browser
def test_a_quick_re_run_from_the_findings_page_lands_beside_the_shipped_evidence(chromium, tmp_path):
    pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**os.environ, "ARCHLAB_RUNS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    with served(env) as port, opened(chromium, port, "/findings", timeout_ms=120_000) as page:
        page.get_by_role("heading", name="SmolLM3's NoPE layers").first.wait_for()
        page.get_by_text("Add your own model").wait_for()  # the sidebar is drawn once the page has finished
        link = page.get_by_role("link", name="Re-run positions (quick) on the Experiments page")
        query = dict(parse_qsl(urlsplit(link.get_attribute("href")).query))
        assert (query["claim"], query["ablation"], query["fmode"]) == ("nope-layers", "positions", "quick")
        link.click()
        page.get_by_text("A re-run of the finding").first.wait_for()
        page.get_by_role("button", name="Train the ablation").wait_for()
        spec = ab.decode_spec(query["spec"])
        assert spec.recipe.tokens == 600_000 and spec.seeds == (0, 1, 2)  # the claim's quick recipe, as linked
        small = replace(spec, lrs=(1e-2,), recipe=replace(SMALL, name=spec.recipe.name))
        page.goto(f"http://127.0.0.1:{port}/experiments?" + urlencode({**query, "spec": ab.encode_spec(small)}))
        train = page.get_by_role("button", name="Train the ablation")
        train.wait_for()
        page.get_by_text("6 runs").first.wait_for()  # 2 cells × 1 learning rate × 3 seeds
        assert page.get_by_text("no longer tests the claim").count() == 0
        page.wait_for_timeout(1000)
        train.click()
        page.get_by_text("Link to this run").wait_for()
        page.get_by_text("A re-run of the finding").first.wait_for()
        page.get_by_text("Ablation results").first.wait_for(timeout=900_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "findings-rerun-experiments.png"))
        page.goto(f"http://127.0.0.1:{port}/findings")
        page.get_by_text("Add your own model").wait_for()
        assert page.get_by_text("re-run:").count() >= 1  # the summary table names the re-run's verdict
        tab = page.get_by_role("tab", name="Quick recipe (2-core CPU) · with a re-run")
        assert tab.count() == 1  # only nope-layers has a re-run
        tab.click()
        page.get_by_text("Re-run (quick):").first.wait_for()
        title = page.get_by_text("nope-layers / positions, quick recipe: final validation loss")
        title.first.wait_for()
        assert "re-run: 3 seeds" in title.first.text_content()
        page.screenshot(path=str(ARTIFACTS / "findings-rerun.png"))
        page.get_by_text("differs from the claim's recipe").first.wait_for()
        page.locator(".js-plotly-plot").filter(
            has_text="nope-layers / positions, quick"
        ).first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "findings-rerun-chart.png"))
        assert (tmp_path / "findings" / "nope-layers" / "quick" / "verdict.json").is_file()
        assert page.get_by_text("Shipped (full):").count() >= 5  # the shipped evidence is still drawn
        assert page.locator("[data-testid='stException']").count() == 0
