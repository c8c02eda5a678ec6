"""The dashboard as a visitor sees it, in a real Chromium (Playwright): first visit, page switches, TTFT.

    .venv/bin/python bench/ui.py                    # 5 fresh servers, 3 rounds of page switches, 8 TTFT clicks
    .venv/bin/python bench/ui.py --repeats 3 --ttft 5 --tag before

- **first visit**: a freshly started server (``streamlit run app.py``, as the README starts it; timed from
  the moment its health endpoint answers) and a new browser opening ``/``. Seconds from ``goto`` to: the
  first paint of the page (its title), the three block diagrams drawn, and the whole page (feature matrix
  and model notes too), as Playwright sees them; ``title_paint`` and ``diagrams_paint`` are timed in the page
  (from the navigation's start to the first animation frame with them in the DOM). Target (issue 10):
  diagrams <= 3 s.
- **page switch**: on that server, clicks in the sidebar menu (Parameters, Playground, Routing, Experiments,
  Architectures, then again), seconds from the click to the new page's first chart / table / button (each
  page's script is let finish before the next click). Two timings: as Playwright sees it (its checks run on
  the page's main thread, so they also wait while the browser draws the rest of the page: ten charts and
  nine tables on Parameters), and *painted*: timed in the page, from the click's event to the first
  animation frame with the new title and that element in the DOM. Target <= 1 s.
- **TTFT in the browser**: the Playground with one small miniature already loaded; milliseconds from the
  click on Generate (a JS click, timed with ``performance.now()`` in the page) to the first generated text
  in its column (a MutationObserver, then the next animation frame). Beside it the backend's own TTFT as
  the page reports it. Target <= 150 ms.
- **trained miniatures** (``--trained-only``, issue 12): the Playground's default mode, each model set on fresh
  servers; milliseconds from the click on Generate to generated text on screen in the first column and in every
  column: the first click as soon as the button shows (models not loaded), the first click once the page is idle
  (its background load may be done) and ``--trained`` more. Writes ui-trained-cpu<cores>[-TAG].json. Target <= 1 s.

Chromium is Debian's (/usr/bin/chromium). Prints a table, writes bench/results/ui-cpu<cores>[-TAG].json.
Timings on a shared 2-core machine are noisy: medians are reported with every repeat kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DIAGRAMS = 3  # the default selection: GPT-2, DeepSeek V3, Qwen3 30B-A3B
#: url path -> (page title, selector of its first meaningful element)
PAGES = {
    "parameters": ("Parameters & Memory", "[data-testid='stDataFrame']"),
    "playground": ("Playground", "[data-testid='stTextArea'] textarea"),
    "routing": ("Routing", "[data-testid='stAlert'], .js-plotly-plot .main-svg"),
    "experiments": ("Experiments", "[data-testid='stDataFrame']"),
    "architectures": ("Architectures", ".js-plotly-plot .main-svg"),
}
SWITCHES = ("parameters", "playground", "routing", "experiments", "architectures")
IDLE = "!document.querySelector(\"[data-testid='stStatusWidget']\")"  # the status widget shows while a script runs
TTFT_MODEL = "qwen3-4b"  # a dense model: its small miniature decodes in a few ms a token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app.py`` on a free port, as the README starts it (the project's .streamlit/config.toml
    applies), with ``args`` added to its command line; its log is kept for the warnings check."""

    def __init__(self, root: Path = ROOT, args: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        self.log = open(f"/tmp/archlab-bench-ui-{self.port}.log", "w+")
        t = time.perf_counter()
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(self.port),
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
                *args,
            ],
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}: {self.text()[-500:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("streamlit did not become healthy in 60 s") from None
                time.sleep(0.05)
        self.ready_s = time.perf_counter() - t

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _title(page, title: str, timeout: float) -> None:
    page.locator("h1", has_text=title).first.wait_for(timeout=timeout)


#: installed in every document of a first visit's context: performance.now() (ms since the navigation started)
#: of the first animation frame after the page's title, and after its block diagrams, are in the DOM
_FIRST_PAINT = (
    """
window.__archlabPaint = {};
(() => {
  const marks = window.__archlabPaint;
  const frame = (name) => { marks[name] = null; requestAnimationFrame(() => { marks[name] = performance.now(); }); };
  const check = () => {
    if (!('title' in marks) && [...document.querySelectorAll('h1')].some(h => h.innerText.includes('Architectures')))
      frame('title');
    if (!('diagrams' in marks) && document.querySelectorAll('.js-plotly-plot .main-svg').length >= %d) {
      frame('diagrams');
      obs.disconnect();
    }
  };
  const obs = new MutationObserver(check);
  obs.observe(document, {subtree: true, childList: true});
})();
"""
    % DIAGRAMS
)


def first_visit(browser, root: Path = ROOT, timeout_ms: float = 120_000) -> tuple:
    """A fresh server and a new browser context opening ``/``: (timings, server, context, page)."""
    server = Server(root)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.add_init_script(_FIRST_PAINT)
    try:
        return _first_visit(server, context, timeout_ms)
    except BaseException:  # the caller only stops a server it got back
        context.close()
        server.stop()
        raise


def _first_visit(server: Server, context, timeout_ms: float) -> tuple:
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    r = {"server_ready_s": server.ready_s}
    t0 = time.perf_counter()
    page.goto(server.url + "/")
    r["html_s"] = _since(t0)
    _title(page, "Architectures", timeout_ms)
    r["title_s"] = _since(t0)
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {DIAGRAMS}", timeout=timeout_ms
    )
    r["diagrams_s"] = _since(t0)
    page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=timeout_ms)
    r["matrix_s"] = _since(t0)
    page.get_by_text("About each model").first.wait_for(timeout=timeout_ms)
    page.locator("a:has-text('official config.json')").nth(DIAGRAMS - 1).wait_for(timeout=timeout_ms)
    r["complete_s"] = _since(t0)
    page.wait_for_function(IDLE, timeout=timeout_ms)
    r["script_done_s"] = _since(t0)
    paint = page.evaluate("window.__archlabPaint")  # ms since the navigation started (a few ms after goto)
    r["title_paint_s"], r["diagrams_paint_s"] = ((paint.get(k) or 0) / 1000 or None for k in ("title", "diagrams"))
    return r, server, context, page


#: true once an element matching the selector is drawn by this run (the page left behind stays on screen,
#: marked stale, until the new page's elements replace it)
_FRESH = """(sel) => [...document.querySelectorAll(sel)].some(e => {
  const box = e.closest("[data-testid='stElementContainer']");
  return !box || box.getAttribute('data-stale') !== 'true';
})"""


#: in the page, before a click in the menu: resolves with ms from the click (its event) to the first animation
#: frame after the new page's title and a fresh first element are in the DOM (what bench.switch waits for)
_SWITCH_PAINT = """
([title, sel]) => {
  const out = {t0: null, dom: null, paint: null};
  const fresh = (e) => { const b = e.closest("[data-testid='stElementContainer']");
                         return !b || b.getAttribute('data-stale') !== 'true'; };
  const check = () => {
    if (out.t0 === null || out.dom !== null) return;
    if (![...document.querySelectorAll('h1')].some(h => h.innerText.includes(title))) return;
    if (![...document.querySelectorAll(sel)].some(fresh)) return;
    out.dom = performance.now() - out.t0;
    obs.disconnect();
    requestAnimationFrame(() => { out.paint = performance.now() - out.t0; });
  };
  const obs = new MutationObserver(check);
  obs.observe(document, {subtree: true, childList: true, characterData: true, attributes: true,
                         attributeFilter: ['data-stale']});
  document.addEventListener('click', () => { out.t0 = performance.now(); }, {capture: true, once: true});
  window.__archlabSwitch = out;
}
"""


def switch(page, path: str, timeout_ms: float = 120_000, painted: list | None = None) -> float | None:
    """Seconds from a click on the menu entry of ``path`` to that page's first meaningful element as Playwright
    sees it (its checks run on the page's main thread, so they wait while the browser draws the rest of the page),
    then waits, untimed, for the page's script to finish. ``painted`` gets the seconds from the click to the first
    frame drawn with that element, timed in the page. None when the menu has no such page."""
    title, marker = PAGES[path]
    link = page.locator("[data-testid='stSidebarNav'] a", has_text=title).first
    if not link.count():
        return None
    page.evaluate(_SWITCH_PAINT, [title, marker])
    t0 = time.perf_counter()
    link.click()
    _title(page, title, timeout_ms)
    page.wait_for_function(_FRESH, arg=marker, timeout=timeout_ms)
    seconds = _since(t0)
    _settle(page, timeout_ms)
    if painted is not None:
        ms = page.evaluate("window.__archlabSwitch.paint")
        painted.append(ms / 1000 if ms is not None else None)
    return seconds


def _settle(page, timeout_ms: float, quiet_s: float = 1.0) -> None:
    """Wait until no script has run for ``quiet_s`` (Streamlit shows its running indicator only after a
    delay, so one look is not enough); a click meanwhile would wait for the page still running."""
    deadline, quiet_since = time.monotonic() + timeout_ms / 1000, None
    while time.monotonic() < deadline:
        if page.evaluate(IDLE):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(100)
    raise TimeoutError("the page kept running")


_OBSERVE = r"""
([old]) => new Promise((resolve, reject) => {
  const code = () => document.querySelector("[data-testid='stCode'] code");
  const progress = () => document.querySelector("[data-testid='stProgress']");
  const before = progress() ? progress().innerText : '';
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith('Generate'));
  if (!button) { reject('no Generate button'); return; }
  let done = false, shown = null;
  const check = () => {
    const p = progress();
    if (shown === null && p && p.innerText !== before) shown = performance.now() - t0;  // the new run is drawn
    const c = code();
    const text = c ? c.innerText.trim() : '';
    if (!done && text.length > 0 && text !== old) {
      done = true;
      const dom = performance.now() - t0;
      obs.disconnect();
      requestAnimationFrame(() => resolve({run_shown_ms: shown, dom_ms: dom, paint_ms: performance.now() - t0, text}));
    }
  };
  const obs = new MutationObserver(check);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
  setTimeout(() => { if (!done) { obs.disconnect(); reject('no new text within 60 s'); } }, 60000);
  const t0 = performance.now();
  button.click();
})
"""


def _wait_run_done(page, timeout_ms: float) -> None:
    page.locator("[data-testid='stProgress']").first.wait_for(timeout=timeout_ms)
    page.wait_for_function(
        "[...document.querySelectorAll(\"[data-testid='stProgress']\")].every(p => /done:|failed/.test(p.innerText))",
        timeout=timeout_ms,
    )
    page.get_by_role("heading", name="Timings").first.wait_for(timeout=timeout_ms)


def _set(page, label: str, value: str) -> None:
    box = page.get_by_role("textbox", name=label).first
    box.fill(value)
    box.press("Tab")


def ttft(page, base: str, clicks: int, tokens: int, timeout_ms: float = 120_000) -> list[dict]:
    """Browser TTFT of ``clicks`` runs of one small miniature that is already loaded."""
    page.goto(f"{base}/playground?models={TTFT_MODEL}&tokens={tokens}&mode=small")  # the random-weight miniature
    page.get_by_role("button", name="Generate").wait_for(timeout=timeout_ms)
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Generate").click()  # loads the model
    _wait_run_done(page, timeout_ms)
    out = []
    for i in range(clicks):
        _set(page, "Prompt", f"Run number {i}: the quick brown fox jumps over")
        page.wait_for_timeout(700)
        old = page.locator("[data-testid='stCode'] code").first.inner_text().strip()
        r = page.evaluate(_OBSERVE, [old])
        _wait_run_done(page, timeout_ms)
        summary = page.locator("[data-testid='stMain']").first.inner_text()
        m = re.search(r"TTFT\s+([\d,.]+)\s*ms", summary)
        r["backend_ms"] = float(m.group(1).replace(",", "")) if m else None
        m = re.search(r"([\d,.]+)\s*tok/s", summary)
        r["tok_s"] = float(m.group(1).replace(",", "")) if m else None
        out.append(r)
        page.wait_for_timeout(300)
    return out


# ----------------------------------------------------------------- trained miniatures (issue 12)

#: model sets of the trained-miniature TTFT: "" is the Playground's default selection
TRAINED_SETS = {
    "default selection (3 models)": "",
    "Qwen3 30B-A3B alone (MoE)": "qwen3-30b-a3b",
    "Llama 3 8B alone (dense)": "llama3-8b",
}
TRAINED_TARGET_MS = 1000

_OBSERVE_ALL = r"""
([olds]) => new Promise((resolve, reject) => {
  // a column shows its first token when its progress reads "generating: k" or "done: k" (k >= 1) in this run
  // and its text block is on the page (a whitespace token is drawn there too, though nothing shows)
  const cols = () => [...document.querySelectorAll("[data-testid='stProgress']")].map(p => {
    const box = p.closest("[data-testid='stVerticalBlock']");
    const code = box ? box.querySelector("[data-testid='stCode'] code") : null;
    return {p: p.innerText.trim(), c: code ? code.innerText : null};
  });
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith('Generate'));
  if (!button) { reject('no Generate button'); return; }
  let first = null, done = false;
  const check = () => {
    const now = cols();
    const isNew = (x, i) => i >= olds.length || x.p !== olds[i].p || x.c !== olds[i].c;
    const fresh = now.filter((x, i) => /^(generating|done): [1-9]/.test(x.p) && x.c !== null && isNew(x, i));
    const failed = now.filter((x, i) => /^failed/.test(x.p) && isNew(x, i));  // counted, never waited for
    if (first === null && fresh.length > 0) first = performance.now() - t0;
    if (!done && fresh.length > 0 && fresh.length + failed.length === now.length && now.length >= olds.length) {
      done = true;
      obs.disconnect();
      const all = performance.now() - t0;
      requestAnimationFrame(() => resolve({first_ms: first, all_ms: all, paint_ms: performance.now() - t0,
                                           columns: now.length, failed: failed.length}));
    }
  };
  const obs = new MutationObserver(check);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
  setTimeout(() => { if (!done) { obs.disconnect(); reject('no token in every column within 120 s'); } }, 120000);
  const t0 = performance.now();
  button.click();
})
"""


_COLUMNS = """() => [...document.querySelectorAll("[data-testid='stProgress']")].map(p => {
  const box = p.closest("[data-testid='stVerticalBlock']");
  const code = box ? box.querySelector("[data-testid='stCode'] code") : null;
  return {p: p.innerText.trim(), c: code ? code.innerText : null};
})"""


def trained_ttft(
    browser, root: Path, clicks: int, tokens: int, settle_s: float = 20.0, timeout_ms: float = 180_000
) -> list[dict]:
    """Click on Generate -> generated text on screen, for the trained miniatures (the Playground's default mode).
    Each model set on two fresh servers: ``immediate``: the first click as soon as the Generate button is on the
    page (a fresh process: its first ``from_pretrained`` imports transformers' loading code, and the models are
    read from the shipped folders, all in the time); ``settled``: the first click once the page has been idle
    ``settle_s`` (a visitor reading the page: the server's warm-up and the Playground load the selected trained
    miniatures in the background meanwhile), then ``clicks`` more with them loaded (``warm``).
    ``first_ms``: the first column shows text; ``all_ms``: every column does."""
    out = []
    for name, models in TRAINED_SETS.items():
        for start in ("immediate", "settled"):
            server = Server(root)
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            try:
                page = context.new_page()
                page.set_default_timeout(timeout_ms)
                page.goto(f"{server.url}/playground?tokens={tokens}" + (f"&models={models}" if models else ""))
                page.get_by_role("button", name="Generate").wait_for(timeout=timeout_ms)
                if start == "settled":
                    _settle(page, timeout_ms, quiet_s=settle_s)
                for i in range(1 + (clicks if start == "settled" else 0)):
                    if i:
                        _set(page, "Prompt", ("And the king said unto him", "O Romeo, Romeo", "Thou shalt not")[i % 3])
                        page.wait_for_timeout(700)
                    olds = page.evaluate(_COLUMNS)
                    r = page.evaluate(_OBSERVE_ALL, [olds])
                    _wait_run_done(page, timeout_ms)
                    summary = page.locator("[data-testid='stMain']").first.inner_text()
                    kind = start if i == 0 else "warm"
                    r.update(
                        set=name,
                        models=models or "default",
                        kind=kind,
                        backend_ttft_ms=[
                            float(m.replace(",", "")) for m in re.findall(r"TTFT\s+([\d,.]+)\s*ms", summary)
                        ],
                        labels=re.findall(r"^(.+ \(trained miniature\))$", summary, re.M),
                        text=[c.inner_text()[:120] for c in page.locator("[data-testid='stCode'] code").all()],
                    )
                    out.append(r)
                    print(
                        f"trained ttft {name} {kind}: first {r['first_ms']:.0f} ms, all {r['all_ms']:.0f} ms",
                        flush=True,
                    )
                    page.wait_for_timeout(300)
            finally:
                context.close()
                server.stop()
    return out


def trained_main(a) -> None:
    """``--trained-only``: the trained-miniature TTFT alone; prints a table, writes bench/results/ui-trained-cpu<cores>[-TAG].json."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            runs = trained_ttft(browser, a.root, a.trained, a.tokens, a.trained_settle)
        finally:
            browser.close()
    print(
        f"\nGenerate -> generated text on screen, trained miniatures on CPU (ms, first column / every column; "
        f"immediate: the first click on a fresh server as soon as the page is drawn; settled: the same after "
        f"{a.trained_settle:g} s idle; warm: median [min–max] of {a.trained} more):"
    )
    summary = {}
    for name in TRAINED_SETS:
        row = {}
        for kind in ("immediate", "settled", "warm"):
            mine = [r for r in runs if r["set"] == name and r["kind"] == kind]
            row[f"{kind}_first_ms"], row[f"{kind}_all_ms"] = (
                _med([r["first_ms"] for r in mine]),
                _med([r["all_ms"] for r in mine]),
            )
        summary[name] = row
        w = [r["all_ms"] for r in runs if r["set"] == name and r["kind"] == "warm"]
        print(
            f"  {name:<30} "
            + "   ".join(
                f"{k} {row[f'{k}_first_ms'] or 0:5.0f} / {row[f'{k}_all_ms'] or 0:5.0f}"
                for k in ("immediate", "settled", "warm")
            )
            + (f" [{min(w):.0f}–{max(w):.0f}]" if w else "")
        )
    worst = max((v for row in summary.values() for v in row.values() if v is not None), default=None)
    print(
        f"target: first token on screen <= {TRAINED_TARGET_MS} ms after Generate for a trained miniature: "
        f"{'not measured' if worst is None else 'met in every case' if worst <= TRAINED_TARGET_MS else 'MISSED in some (see above)'}"
    )
    out = ROOT / "bench" / "results" / f"ui-trained-cpu{os.cpu_count()}{'-' + a.tag if a.tag else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "cores": os.cpu_count(),
                "load_average": os.getloadavg(),
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "tokens": a.tokens,
                "settle_s": a.trained_settle,
                "zoo": os.environ.get("ARCHLAB_ZOO_DIR") or "assets/zoo",
                "runs": runs,
                "medians": summary,
                "target_ms": TRAINED_TARGET_MS,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh servers for the first visit")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of page switches (on the first server)")
    ap.add_argument("--ttft", type=int, default=8, help="timed Generate clicks")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens of the TTFT runs")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after the first visit before the first switch (0: click at once)",
    )
    ap.add_argument("--tag", default="", help="suffix of the result file (ui-TAG.json)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve (e.g. an older commit's tree)")
    ap.add_argument(
        "--trained-only",
        action="store_true",
        help="only the trained-miniature TTFT (issue 12): fresh server per model set, cold + warm clicks",
    )
    ap.add_argument("--trained", type=int, default=5, help="warm Generate clicks per model set of --trained-only")
    ap.add_argument(
        "--trained-settle",
        type=float,
        default=20.0,
        help="--trained-only: seconds the page is left idle before the 'settled' first click",
    )
    a = ap.parse_args()
    if a.trained_only:
        return trained_main(a)
    from playwright.sync_api import sync_playwright

    visits, switches, clicks, warnings = [], {p: [] for p in SWITCHES}, [], []
    painted = {p: [] for p in SWITCHES}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for rep in range(a.repeats):
                r, server, context, page = first_visit(browser, a.root)
                try:
                    visits.append(r)
                    print(f"first visit {rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
                    if rep == 0:
                        page.wait_for_timeout(a.settle * 1000)
                        for _ in range(a.rounds):
                            for path in SWITCHES:
                                seconds = switch(page, path, painted=painted[path])
                                if seconds is not None:
                                    switches[path].append(seconds)
                        print("switches: " + ", ".join(f"{p} {v}" for p, v in switches.items()), flush=True)
                        if a.ttft:
                            clicks = ttft(page, server.url, a.ttft, a.tokens)
                            print("ttft: " + ", ".join(f"{c['paint_ms']:.0f}" for c in clicks), flush=True)
                finally:
                    context.close()
                    log = server.text()
                    server.stop()
                    warnings.append(
                        [l for l in log.splitlines() if "Inotify" in l or "Traceback" in l or "Error" in l][:20]
                    )
        finally:
            browser.close()

    print(f"\nfirst visit, fresh server each time ({len(visits)} repeats; seconds, median [min–max]):")
    for k in (
        "server_ready_s",
        "title_s",
        "title_paint_s",
        "diagrams_s",
        "diagrams_paint_s",
        "matrix_s",
        "complete_s",
        "script_done_s",
    ):
        v = [r[k] for r in visits if r.get(k) is not None]
        if v:
            print(f"  {k[:-2]:<16} {_med(v):6.2f}  [{min(v):.2f}–{max(v):.2f}]")
    print("  (*_paint: timed in the page, to the first frame drawn with them; the others: when Playwright saw them)")
    print(
        f"page switches (click -> the page's first content; seconds, median [min–max]; "
        f"first click {a.settle:g} s after the first visit; as Playwright saw it / painted, timed in the page):"
    )
    for p, v in switches.items():
        if v:
            w = [x for x in painted[p] if x is not None]
            print(
                f"  {p:<14} {_med(v):6.2f}  [{min(v):.2f}–{max(v):.2f}]  first {v[0]:.2f}"
                + (f"   painted {_med(w):5.2f}  [{min(w):.2f}–{max(w):.2f}]" if w else "")
            )
    if clicks:
        print(f"TTFT in the browser, {TTFT_MODEL} small miniature loaded (ms, median [min–max]):")
        for k in ("run_shown_ms", "dom_ms", "paint_ms", "backend_ms", "tok_s"):
            v = [c[k] for c in clicks if c.get(k) is not None]
            if v:
                print(f"  {k.removesuffix('_ms'):<14} {_med(v):6.0f}  [{min(v):.0f}–{max(v):.0f}]")
    flagged = [w for ws in warnings for w in ws]
    print(f"server log lines with Inotify/Error/Traceback: {len(flagged)}" + (f" e.g. {flagged[0]}" if flagged else ""))
    med = {k: _med([r.get(k) for r in visits]) for k in visits[0]} if visits else {}
    print(
        f"targets: diagrams on a fresh server <= 3 s ({'met' if med and med['diagrams_s'] <= 3 else 'MISSED'}), "
        f"page switch <= 1 s ({'not measured' if not any(switches.values()) else 'met' if all(_med(v) <= 1 for v in switches.values() if v) else 'MISSED'}; "
        f"painted: {'met' if all((_med(v) or 0) <= 1 for v in painted.values()) else 'MISSED'}), "
        f"browser TTFT <= 150 ms ({'not measured' if not clicks else 'met' if _med([c['paint_ms'] for c in clicks]) <= 150 else 'MISSED'})"
    )
    out = ROOT / "bench" / "results" / f"ui-cpu{os.cpu_count()}{'-' + a.tag if a.tag else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "cores": os.cpu_count(),
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "first_visit": visits,
                "switches": switches,
                "switches_painted": painted,
                "ttft_model": TTFT_MODEL,
                "settle_s": a.settle,
                "ttft_tokens": a.tokens,
                "ttft": clicks,
                "log_flags": warnings,
                "medians": {
                    "first_visit": med,
                    "switches": {p: _med(v) for p, v in switches.items()},
                    "switches_painted": {p: _med(v) for p, v in painted.items()},
                    "ttft_paint_ms": _med([c["paint_ms"] for c in clicks]),
                },
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
