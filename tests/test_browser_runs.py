"""A run's link in a real Chromium: a second browser (its own context: other cookies, other session) opens the
link of a run that is streaming and sees the same tokens and the same routing; a bad link is one line."""

import urllib.parse

import pytest
from test_browser import ARGS, ARTIFACTS, _texts, served

HEATMAP = (
    "() => { const p = document.querySelector('.js-plotly-plot'); return p && p.data ? JSON.stringify(p.data) : null }"
)


def _finished(page) -> None:
    page.get_by_text("Timings").wait_for(timeout=120_000)


def _routing_final(page) -> str:
    """The heatmap's data once the run has ended (download buttons appear then) and the page has settled: the
    last live frame and the final one can both be in the page for a moment on a slow machine."""
    page.get_by_role("button", name="PNG").first.wait_for(timeout=120_000)
    page.wait_for_function(HEATMAP)
    last = None
    for _ in range(60):
        now = page.evaluate(HEATMAP)
        if now == last and not page.locator("[data-stale='true']").count():
            return now
        last = now
        page.wait_for_timeout(1000)
    return last


@pytest.mark.browser
def test_a_run_link_opens_the_same_run_in_another_browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with served() as port:
        base = f"http://127.0.0.1:{port}"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                owner = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
                owner.set_default_timeout(30_000)
                owner.goto(f"{base}/playground?models=deepseek-v3,qwen3-30b-a3b&tokens=800")
                generate = owner.get_by_role("button", name="Generate")
                generate.wait_for()
                owner.wait_for_timeout(1000)
                prompt = owner.get_by_role("textbox", name="Prompt").first
                prompt.fill("Experts in a mixture of experts layer")
                prompt.press("Tab")
                owner.wait_for_timeout(500)
                generate.click()
                owner.wait_for_function("new URLSearchParams(location.search).get('run')", timeout=60_000)
                run_id = urllib.parse.parse_qs(urllib.parse.urlparse(owner.url).query)["run"][0]
                assert len(run_id) == 24

                other = browser.new_context(viewport={"width": 1400, "height": 1100})  # another visitor
                watcher = other.new_page()
                watcher.set_default_timeout(30_000)
                watcher.goto(f"{base}/playground?run={run_id}")
                watcher.wait_for_function("document.querySelectorAll(\"[data-testid='stCode'] code\").length == 2")
                routing = other.new_page()
                routing.set_default_timeout(30_000)
                routing.goto(f"{base}/routing?run={run_id}")
                routing.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
                watcher.screenshot(path=str(ARTIFACTS / "run-link-watcher-live.png"))

                _finished(owner)
                _finished(watcher)
                mine, theirs = _texts(owner), _texts(watcher)
                assert len(mine) == 2 and all(t.strip() for t in mine)
                assert theirs == mine
                assert owner.locator("[data-testid='stException']").count() == 0
                assert watcher.locator("[data-testid='stException']").count() == 0
                watcher.screenshot(path=str(ARTIFACTS / "run-link-watcher-done.png"))

                owner.get_by_role("link", name="Watch the experts live on the Routing page").click()
                assert _routing_final(owner) == _routing_final(routing) is not None
                assert f"run={run_id}" in owner.url
                routing.screenshot(path=str(ARTIFACTS / "run-link-routing.png"), full_page=True)

                stranger = browser.new_context().new_page()  # a made-up link
                stranger.goto(f"{base}/routing?run={'A' * 24}")
                stranger.get_by_text("This run link is not valid or has expired").wait_for()
                assert stranger.locator("[data-testid='stException']").count() == 0
                assert stranger.locator(".js-plotly-plot").count() == 0
            finally:
                browser.close()
