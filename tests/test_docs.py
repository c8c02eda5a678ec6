"""The front door: README.md stays short, every relative link in it, in docs/ and in the results index points at a
file that exists, the results index names every file it holds, and the README's screenshots are the ones
tools/screenshots.py makes (re-made in a real Chromium by the browser test)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
INDEX = RESULTS / "README.md"
IMG = ROOT / "docs" / "img"
MAX_README_LINES = 200
MAX_PNG_BYTES = 200_000
#: a Markdown link or image: [text](target) / ![alt](target "title")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: a result file or folder as the index names it, in backticks
RESULT_NAME = re.compile(r"[\w.-]+\.(?:json|csv|log)|[\w.-]+/")


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), INDEX]


def _screenshots():
    """tools/screenshots.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "tools" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def broken_links(md: Path) -> list[str]:
    """Relative link targets of ``md`` (anchors dropped) that are not a file or folder; code is not searched."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor in the same page
        if not (md.parent / target.split("#", 1)[0]).exists():
            bad.append(target)
    return bad


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("md", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(md):
    assert broken_links(md) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("x")
    md = tmp_path / "doc.md"
    md.write_text(
        "[ok](there.md#part) [gone](missing.md) ![img](img/none.png) [web](https://example.com) "
        "[anchor](#top) `[code](not-a-link.md)`\n```\n[block](nor-this.md)\n```\n"
    )
    assert broken_links(md) == ["missing.md", "img/none.png"]


def test_results_index_names_every_result_and_only_existing_ones():
    """bench/results/README.md has a line for every file and folder in bench/results/ and its archive/, and every
    result it names exists there."""

    def entries(folder: Path) -> set[str]:
        return {p.name + "/" if p.is_dir() else p.name for p in folder.iterdir()} - {"README.md", "archive/"}

    current, archive = entries(RESULTS), entries(RESULTS / "archive")
    text = INDEX.read_text()
    head, _, tail = text.partition("## archive/")
    named_head = set(re.findall(r"`([^`\s]+)`", head))
    named_tail = set(re.findall(r"`([^`\s]+)`", tail))
    assert current - named_head == set(), "files in bench/results/ without a line in its README"
    assert archive - named_tail == set(), "files in bench/results/archive/ without a line in its README"
    named = {n for n in named_head | named_tail if RESULT_NAME.fullmatch(n)}
    assert named - current - archive == set(), "bench/results/README.md names results that are not there"


def test_readme_shows_the_screenshots_the_script_makes():
    shots = _screenshots()
    names = [f"{s.name}.png" for s in shots.SHOTS]
    assert sorted(p.name for p in IMG.glob("*.png")) == sorted(names)
    readme = README.read_text()
    for name in names:
        png = IMG / name
        assert f"(docs/img/{name})" in readme, f"README.md does not show {name}"
        assert png.stat().st_size < MAX_PNG_BYTES, f"{name}: {png.stat().st_size:,} bytes"
        with Image.open(png) as im:
            assert im.size == (shots.WIDTH, shots.HEIGHT)


@pytest.mark.browser
def test_screenshot_script_makes_every_page(chromium, tmp_path):
    """The README's one command, run against a fresh server of this checkout: one small PNG per page."""
    pytest.importorskip("playwright.sync_api")
    shots = _screenshots()
    out = subprocess.run(
        [sys.executable, "tools/screenshots.py", "--out", str(tmp_path), "--chromium", chromium],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for shot in shots.SHOTS:
        png = tmp_path / f"{shot.name}.png"
        assert png.is_file(), f"no {png.name}: {out.stdout[-500:]}"
        assert png.stat().st_size < MAX_PNG_BYTES
        with Image.open(png) as im:
            assert im.size == (shots.WIDTH, shots.HEIGHT)
            assert len(im.getcolors(maxcolors=1 << 16) or ()) > 16, f"{png.name} is nearly blank"
