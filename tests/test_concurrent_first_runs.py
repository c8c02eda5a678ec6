"""Concurrent first runs on a fresh server (issue 15): six sessions press Generate at the same moment and every
run streams to the end. Before, transformers' first import raced ("cannot import name 'AutoConfig'")."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = 6
TOKENS = 64
MODELS = ("qwen3-30b-a3b", "deepseek-v3")

#: What the Playground does on Generate (views/playground.py: requests, slots, LiveRun.start, then drain),
#: in six threads released at once by a barrier, in a fresh interpreter: nothing imported or built before.
CHILD = r"""
import json, sys, threading
from backend.live.generation import GenerationSettings
from backend.present import playground
from backend.present.playground import LiveRun, SlotModel

N, TOKENS, MODELS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
gate = threading.Barrier(N)
out = [None] * N

def session(i):
    try:
        gate.wait()
        runs = playground.requests_for([(m, m) for m in MODELS], "small", "cpu")
        slots = [SlotModel(m, m, "#444444", not playground.is_dense(src)) for m, src, _ in runs]
        live = LiveRun.start(slots, [r for _, _, r in runs], f"session {i}: the quick brown fox",
                             GenerationSettings(max_new_tokens=TOKENS, ignore_eos=True), f"session-{i}")
        while not live.done:
            live.pump(0.1)
        out[i] = [{k: live.run.stats(s)[k] for k in ("status", "reason", "new_tokens", "error")}
                  for s in range(len(slots))]
    except Exception as e:
        out[i] = f"{type(e).__name__}: {e}"

threads = [threading.Thread(target=session, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join(600)
print(json.dumps(out))
"""


def _finished(result) -> bool:
    return isinstance(result, list) and all(
        s["status"] == "finished" and s["reason"] == "length" and s["new_tokens"] == TOKENS for s in result
    )


def test_six_sessions_start_at_once_in_a_fresh_interpreter():
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(SESSIONS), str(TOKENS), ",".join(MODELS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == SESSIONS
    bad = [r for r in results if not _finished(r)]
    assert not bad, bad


@pytest.mark.browser
def test_six_browser_sessions_on_a_fresh_server(chromium):
    """Six real browser sessions open the Playground on a freshly started server and press Generate within a
    fraction of a second; each one streams both models to the end, with no error on any page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    sys.path.insert(0, str(ROOT / "bench"))
    from ui import ARGS, Server  # the benchmark's server: `streamlit run app.py` as the README starts it

    server = Server()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                pages = []
                for _ in range(SESSIONS):
                    page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
                    page.set_default_timeout(240_000)
                    page.goto(f"{server.url}/playground?models={','.join(MODELS)}&tokens={TOKENS}")
                    pages.append(page)
                for page in pages:
                    page.get_by_role("button", name="Generate").wait_for()
                page.wait_for_timeout(1000)
                t = time.monotonic()
                for page in pages:  # a JS click returns at once: all six within a fraction of a second
                    page.evaluate(
                        "[...document.querySelectorAll('button')]"
                        ".find(b => b.innerText.trim().endsWith('Generate')).click()"
                    )
                assert time.monotonic() - t < 1.0
                for i, page in enumerate(pages):
                    page.wait_for_function(
                        "(() => { const p = [...document.querySelectorAll(\"[data-testid='stProgress']\")];"
                        f" return p.length == {len(MODELS)} && p.every(x => /done:|failed/.test(x.innerText)); }})()",
                        timeout=300_000,
                    )
                    progress = page.locator("[data-testid='stProgress']").all_inner_texts()
                    assert progress == [f"done: {TOKENS} tokens (length)"] * len(MODELS), (i, progress)
                    assert page.locator("[data-testid='stException']").count() == 0
                    errors = [e for e in page.locator("[data-testid='stAlert']").all_inner_texts() if "rror" in e]
                    assert not errors, (i, errors)
                    texts = page.locator("[data-testid='stCode'] code").all_inner_texts()
                    assert len(texts) == len(MODELS) and all(t.strip() for t in texts)
            finally:
                browser.close()
    finally:
        log = server.text()
        server.stop()
    assert "ImportError" not in log and "Traceback" not in log, log[-3000:]
