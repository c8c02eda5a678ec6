"""In a real Chromium: train two tiny architectures side by side on the Experiments page and watch both learning
curves stream, then see the final table."""

import json

import pytest
from test_browser import ARGS, ARTIFACTS, served

#: points per trace of the learning-curve chart (its first plot), by trace name
CURVES = """() => { const p = document.querySelector('.js-plotly-plot');
  if (!p || !p.data) return null;
  const out = {};  // _fullData: plotly.js's decoded traces (the figure sends its arrays base64-packed)
  for (const t of (p._fullData || p.data)) { const n = t._length ?? (t.x && t.x.length);
    if (n) out[t.name + ':' + (t.xaxis || 'x')] = n; }
  return JSON.stringify(out); }"""


@pytest.mark.browser
def test_two_tiny_models_train_and_both_curves_stream(chromium, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**__import__("os").environ, "ARCHLAB_RUNS_DIR": str(tmp_path)}
    with served(env) as port:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.set_default_timeout(60_000)
                page.goto(f"http://127.0.0.1:{port}/experiments?models=llama3-8b,qwen3-30b-a3b")
                train = page.get_by_role("button", name="Train", exact=True)
                train.wait_for()
                page.wait_for_timeout(1000)
                tokens = page.get_by_label("Training tokens per model")
                tokens.fill("100k")
                tokens.press("Enter")
                page.get_by_text("48 steps", exact=False).first.wait_for()
                train.click()
                page.get_by_text("Link to this run").wait_for()
                seen = []
                for _ in range(120):  # sample the chart while it streams
                    page.wait_for_timeout(1000)
                    raw = page.evaluate(CURVES)
                    if raw:
                        seen.append(json.loads(raw))
                    if page.get_by_text("Results").count():
                        break
                page.screenshot(path=str(ARTIFACTS / "experiments-training.png"), full_page=True)
                page.get_by_text("Results").first.wait_for(timeout=300_000)
                page.screenshot(path=str(ARTIFACTS / "experiments-done.png"), full_page=True)
                live = [s for s in seen if len(s) >= 2]
                assert live, seen
                names = {k.split(":")[0] for s in live for k in s}
                assert {"Llama 3 8B", "Qwen3 30B-A3B"} <= names
                counts = {}  # trace -> its point counts over the samples
                for s in live:
                    for k, n in s.items():
                        counts.setdefault(k, []).append(n)
                grew = [k for k, ns in counts.items() if max(ns) > ns[0]]
                assert {k.split(":")[0] for k in grew} >= {"Llama 3 8B", "Qwen3 30B-A3B"}, counts
                page.get_by_text("same as the others").first.wait_for(state="attached")  # drawn after the results
            finally:
                browser.close()
