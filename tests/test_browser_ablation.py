"""In a real Chromium: open the Experiments page's Ablation mode from a link that fills the form, train a tiny
2-cell ablation (2 learning rates × 2 seeds) and see its headline table."""

import os

import pytest
from test_browser import ARTIFACTS, opened, served

from backend.present import ablation as ab
from backend.train.ablation import AblationSpec
from backend.train.recipe import preset

SPEC = AblationSpec(
    "olmo2-7b",
    (("qk_norm", ("off", "on")),),
    (1e-3, 1e-2),
    (0, 1),
    preset("tiny", budget=50_000, layers=2, batch=4, seq_len=32, tokens=4096, eval_windows=4),
    "cpu",
)


@pytest.mark.browser
def test_a_tiny_ablation_trains_from_the_page_and_shows_its_headline(chromium, tmp_path):
    pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**os.environ, "ARCHLAB_RUNS_DIR": str(tmp_path)}
    with served(env) as port, opened(chromium, port, f"/experiments?{ab.spec_query(SPEC)}") as page:
        train = page.get_by_role("button", name="Train the ablation")
        train.wait_for()
        page.get_by_text("8 runs").first.wait_for()  # 2 cells × 2 learning rates × 2 seeds
        page.get_by_text("patches + qk_norm_off").first.wait_for(state="attached")  # the preview's config diff
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "ablation-preview.png"))
        train.click()
        page.get_by_text("Link to this run").wait_for()
        page.get_by_text("Ablation of OLMo 2 7B").first.wait_for()
        page.get_by_text("Ablation results").first.wait_for(timeout=300_000)
        page.get_by_text("Δ loss vs reference (95 % CI)").first.wait_for(state="attached")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "ablation-results.png"))
        assert page.get_by_text("qk_norm=off", exact=True).count() >= 1
        assert page.get_by_text("too few seeds", exact=True).count() >= 1  # 2 seeds: intervals, no verdict
        assert page.get_by_text("Final validation loss against the learning rate").count() >= 1
        assert page.locator("[data-testid='stException']").count() == 0
