"""Runs by link, allowed model folders, per-visitor quotas, visitors' names shown as text (issues 10 and 15)."""

import ast
import collections
import json
import math
import os
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from backend.arch import catalog
from backend.arch.errors import ArchLabError
from backend.live import roots, runs, runtime
from backend.live.generation import GenerationSettings
from backend.live.runtime import ModelRequest
from backend.present import playground
from backend.present.playground import LiveRun, SlotModel
from backend.present.text import md, swatch

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
TINY = ModelRequest("qwen3-4b", size="tiny")
MOE = ModelRequest("deepseek-v3", size="tiny")
LONG = GenerationSettings(max_new_tokens=4096, ignore_eos=True)


class Job:
    """A stand-in job: running until cancelled or ended."""

    def __init__(self):
        self.running = True

    def cancel(self):
        self.running = False


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ----------------------------------------------------------------- run ids


def test_run_ids_are_unguessable():
    ids = [runs.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(runs.valid_id(i) and len(i) == 24 for i in ids)
    assert runs.ID_BYTES * 8 >= 128
    # every position is uniform over the 64 URL-safe characters: ~6 bits each, 24 positions >= 128 bits
    bits = 0.0
    for pos in range(24):
        counts = collections.Counter(i[pos] for i in ids)
        assert len(counts) == 64
        bits += -sum(c / len(ids) * math.log2(c / len(ids)) for c in counts.values())
    assert bits >= 128 + 10, bits  # 144 bits drawn; the estimate falls short of 6 bits a position by ~0.002


def test_ids_come_from_secrets(monkeypatch):
    asked = []
    monkeypatch.setattr(runs.secrets, "token_urlsafe", lambda n: asked.append(n) or "A" * 24)
    assert runs.new_id() == "A" * 24 and asked == [runs.ID_BYTES]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "x",
        "A" * 23,
        "A" * 25,
        "A" * 23 + "/",
        "../../etc/passwd",
        5,
        "<script>alert(1)</script>xxxxx",
        "A" * 24 + "\n",
    ],
)
def test_malformed_ids_are_not_found(bad):
    reg = runs.Registry(gpu_total=lambda: 0)
    with pytest.raises(ArchLabError) as e:
        reg.get(bad)
    assert str(e.value) == runs.NOT_FOUND


# ----------------------------------------------------------------- registry


def test_unknown_expired_and_other_kind_ids_give_the_same_line():
    clock = Clock()
    reg = runs.Registry(clock=clock, gpu_total=lambda: 0, env={"ARCHLAB_RUN_TTL_S": "3600"})
    job = Job()
    run_id = reg.register(job, "generate", "alice")
    assert reg.job(run_id) is job and reg.get(run_id, "generate").session_id == "alice"
    messages = set()
    for probe in (runs.new_id(), lambda: reg.get(run_id, "train")):
        with pytest.raises(ArchLabError) as e:
            probe() if callable(probe) else reg.get(probe)
        messages.add(str(e.value))
    job.cancel()
    assert reg.job(run_id) is job  # noted as ended now
    clock.t += 3600
    assert reg.job(run_id) is job  # kept for the whole hour after it ended
    clock.t += 2
    with pytest.raises(ArchLabError) as e:
        reg.get(run_id)
    messages.add(str(e.value))
    assert messages == {runs.NOT_FOUND}
    assert "\n" not in runs.NOT_FOUND


def test_a_running_run_never_expires():
    clock = Clock()
    reg = runs.Registry(clock=clock, gpu_total=lambda: 0, env={"ARCHLAB_RUN_TTL_S": "60"})
    run_id = reg.register(Job(), "train", "bob")
    clock.t += 10**6
    assert reg.get(run_id, "train").running


def test_finished_runs_are_bounded_in_memory():
    clock = Clock()
    reg = runs.Registry(
        clock=clock,
        gpu_total=lambda: 0,
        env={"ARCHLAB_RUNS_KEPT": "10", "ARCHLAB_RUNS_KEPT_PER_SESSION": "3", "ARCHLAB_QUOTA_GENERATE": "1000"},
    )
    made = collections.defaultdict(list)
    for i in range(40):
        job = Job()
        sid = f"s{i % 8}"
        made[sid].append(reg.register(job, "generate", sid))
        job.cancel()
        clock.t += 1
    assert len(reg) <= 10
    for ids in made.values():
        kept = [i for i in ids if _exists(reg, i)]
        assert len(kept) <= 3 and kept == ids[len(ids) - len(kept) :]  # the newest are kept
    going = [reg.register(Job(), "generate", "busy") for _ in range(20)]  # running runs are never dropped
    assert all(_exists(reg, i) for i in going)


def _exists(reg, run_id) -> bool:
    try:
        reg.get(run_id)
        return True
    except ArchLabError:
        return False


def test_bad_limits_in_the_environment_are_one_line():
    for env in (
        {"ARCHLAB_QUOTA_GENERATE": "two"},
        {"ARCHLAB_QUOTA_GPU_SHARE": "1.5"},
        {"ARCHLAB_QUOTA_GPU_SHARE": "nan"},
        {"ARCHLAB_RUN_TTL_S": "-1"},
    ):
        with pytest.raises(ArchLabError) as e:
            runs.limits(env)
        assert next(iter(env)) in str(e.value) and "\n" not in str(e.value)
    assert runs.limits({}) == runs.Limits()
    assert runs.Limits().ttl_s >= 3600


# ----------------------------------------------------------------- quotas


def test_quotas_hold_with_8_sessions():
    reg = runs.Registry(
        gpu_total=lambda: 80 * 2**30,
        env={"ARCHLAB_QUOTA_GENERATE": "2", "ARCHLAB_QUOTA_TRAIN": "1", "ARCHLAB_QUOTA_GPU_SHARE": "0.25"},
    )
    sessions = [f"session-{i}" for i in range(8)]
    jobs, refused = collections.defaultdict(list), collections.defaultdict(list)
    barrier = threading.Barrier(8)

    def visitor(sid):
        barrier.wait()
        for kind, gib in [
            ("generate", 8),
            ("generate", 8),
            ("generate", 1),
            ("train", 1),
            ("train", 1),
            ("generate", 0),
        ]:
            try:
                with reg.admit(sid, kind, gpu_bytes=gib * 2**30) as ticket:
                    job = Job()
                    ticket.register(job)
                    jobs[sid].append((kind, job))
            except ArchLabError as e:
                refused[sid].append(str(e))

    threads = [threading.Thread(target=visitor, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sid in sessions:
        assert [k for k, _ in jobs[sid]] == ["generate", "generate", "train"], (sid, refused[sid])
        assert reg.usage(sid) == {"generate": 2, "train": 1, "gpu_bytes": 17 * 2**30}
        assert len(refused[sid]) == 3
        assert "each visitor may have 2 at once" in refused[sid][0]  # a third generation run
        assert "each visitor may have 1 at once" in refused[sid][1]  # a second training run
        assert "each visitor may have 2 at once" in refused[sid][2]
    # one visitor ends a run: only that visitor gets a slot back; the others' runs are untouched
    jobs["session-0"][0][1].cancel()
    with reg.admit("session-0", "generate", gpu_bytes=2 * 2**30) as ticket:
        ticket.register(Job())
    with pytest.raises(ArchLabError, match="each visitor may have 2"):
        with reg.admit("session-1", "generate"):
            pass
    assert all(job.running for sid in sessions[1:] for _, job in jobs[sid])


def test_gpu_share_is_per_visitor():
    reg = runs.Registry(
        gpu_total=lambda: 80 * 2**30, env={"ARCHLAB_QUOTA_GPU_SHARE": "0.25", "ARCHLAB_QUOTA_GENERATE": "9"}
    )
    reg.register(Job(), "generate", "a", gpu_bytes=15 * 2**30)
    with pytest.raises(ArchLabError) as e:
        reg.register(Job(), "generate", "a", gpu_bytes=10 * 2**30)
    assert "10.0 GiB" in str(e.value) and "15.0 GiB" in str(e.value) and "25%" in str(e.value)
    reg.register(Job(), "generate", "b", gpu_bytes=15 * 2**30)  # another visitor has its own share


def test_an_admission_left_without_a_job_frees_its_slot():
    reg = runs.Registry(gpu_total=lambda: 0, env={"ARCHLAB_QUOTA_GENERATE": "1"})
    with pytest.raises(ArchLabError, match="the prompt is empty"):
        with reg.admit("a", "generate"):
            raise ArchLabError("the prompt is empty")
    reg.register(Job(), "generate", "a")
    with pytest.raises(ArchLabError, match="may have 1 at once"):
        reg.register(Job(), "generate", "a")


def test_zero_quota_says_so():
    reg = runs.Registry(gpu_total=lambda: 0, env={"ARCHLAB_QUOTA_TRAIN": "0"})
    with pytest.raises(ArchLabError, match="does not start training runs for visitors"):
        reg.register(Job(), "train", "a")


def generation_quota(sessions: int = 8, asks: int = 3, limit: int = 2) -> dict:
    """``sessions`` visitors each ask at the same moment for ``asks`` long generation runs (real miniature runs,
    through the registry) with a quota of ``limit``. Returns what was admitted and refused, and whether every
    admitted run was still generating when all had been asked (nobody's work touched); then cancels them."""
    reg = runs.Registry(gpu_total=lambda: 0, env={"ARCHLAB_QUOTA_GENERATE": str(limit)})
    runtime.load(TINY)
    got, refused, barrier = collections.defaultdict(list), collections.defaultdict(list), threading.Barrier(sessions)

    def visitor(i):
        barrier.wait()
        for _ in range(asks):
            try:
                with reg.admit(f"s{i}", "generate") as ticket:
                    live = LiveRun.start([SlotModel("qwen3-4b", "q", "#2E91E5", False)], [TINY], f"visitor {i}", LONG)
                    ticket.register(live)
                    got[i].append(live)
            except ArchLabError as e:
                refused[i].append(str(e))

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(sessions)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        untouched = all(live.running and live.run.stats(0)["reason"] == "" for v in got.values() for live in v)
    finally:
        for v in got.values():
            for live in v:
                live.cancel()
        for v in got.values():
            for live in v:
                live.run.join(30)
    return {
        "sessions": sessions,
        "asked_per_session": asks,
        "limit": limit,
        "admitted": {i: len(got[i]) for i in range(sessions)},
        "refused": {i: refused[i] for i in range(sessions)},
        "others_untouched": untouched,
        "all_cancelled": all(live.run.stats(0)["reason"] == "cancelled" for v in got.values() for live in v),
    }


def test_real_generation_runs_of_8_sessions_within_quota():
    """8 sessions each ask for 3 long generation runs at once (limit 2): each gets 2, the third is refused,
    and every admitted run is still generating (nobody's work was touched) until it is cancelled."""
    r = generation_quota(8, 3, 2)
    assert r["admitted"] == {i: 2 for i in range(8)}
    assert all(len(m) == 1 and "may have 2 at once" in m[0] for m in r["refused"].values())
    assert r["others_untouched"] and r["all_cancelled"]


# ----------------------------------------------------------------- several viewers of one run


def test_a_run_reattaches_by_id_from_another_session():
    reg = runs.Registry(gpu_total=lambda: 0)
    with reg.admit("owner", "generate") as ticket:
        live = LiveRun.start(
            [SlotModel("deepseek-v3", "d", "#2E91E5", True)],
            [MOE],
            "Experts of a layer",
            GenerationSettings(max_new_tokens=8, ignore_eos=True),
            "owner",
        )
        ticket.register(live)
    other = reg.job(ticket.id, "generate")  # what a tab holding the link gets: no session is asked for
    while not other.done:
        other.pump(0.05)
    assert other is live and reg.get(ticket.id).session_id == "owner"
    assert other.run.stats(0)["new_tokens"] == 8 and len(other.run.routing(0).steps) == 8
    assert reg.usage("owner")["generate"] == 0 and reg.get(ticket.id).ended is not None  # kept after its end


def test_two_viewers_of_one_run_see_the_same_run():
    live = LiveRun.start(
        [SlotModel("deepseek-v3", "d", "#2E91E5", True)],
        [MOE],
        "The experts of a layer",
        GenerationSettings(max_new_tokens=24, ignore_eos=True),
    )
    seen = {"a": [], "b": []}

    def viewer(name):
        while not live.done:
            live.pump(0.05)
            seen[name].append(live.version)

    threads = [threading.Thread(target=viewer, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert live.done and live.run.stats(0)["new_tokens"] == 24
    assert live.routing_steps == 24 and live.prompt_tokens[0] > 0  # every event counted once, whoever drained it
    r = playground.slot_routing(live, 0)
    assert len(r.trace.steps) == 24 and len(r.tokens) == live.prompt_tokens[0] + 23


# ----------------------------------------------------------------- allowed roots


def make_tree(tmp: Path) -> tuple[Path, Path, str]:
    """Under ``tmp``: a root with a checkpoint-like folder and symlinks out of it, and an outside folder
    holding the same; returns (root, outside) and the ARCHLAB_MODEL_DIRS value that allows the root."""
    root, outside = tmp / "models", tmp / "outside"
    for d in (root / "good", outside / "secret"):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(catalog.raw_config("qwen3-0.6b")))
    (root / "to-outside").symlink_to(outside / "secret")
    (root / "to-nowhere").symlink_to(outside / "no-such-folder")
    (root / "to-etc").symlink_to("/etc")
    return root, outside, os.pathsep.join([str(root), str(tmp / "no-such-root")])


@pytest.fixture
def tree(tmp_path, monkeypatch):
    root, outside, dirs = make_tree(tmp_path)
    monkeypatch.setenv("ARCHLAB_MODEL_DIRS", dirs)
    return root, outside


def _refused_paths(root: Path, outside: Path) -> list[str]:
    return [
        "/",
        "/etc",
        "/etc/passwd",
        "/proc/self",
        "/proc/1/root",
        "../../..",
        "~",
        str(outside / "secret"),
        str(outside / "no-such-folder"),
        str(root / "to-outside"),
        str(root / "to-nowhere"),
        str(root / "to-etc"),
        str(root / ".." / "outside" / "secret"),
        str(root / ".." / "outside" / "nothing"),
        f"{root}/good/../../outside/secret",
        f"{root}/../models-evil",
        "/etc/../etc/ssl",
        "a\x00b",
        str(outside / "secret") + "/",
        "x" * 5000,
    ]


def probe_roots(root: Path, outside: Path) -> dict:
    """Every refused path through ``roots.confine`` and the confined checkpoint resolver: the messages seen
    (one is right), split by whether the target exists."""
    out = {"tried": 0, "refused": 0, "exists": 0, "messages": set()}
    for path in _refused_paths(root, outside):
        try:
            exists = os.path.exists(path)
        except ValueError:
            exists = False
        out["exists"] += exists
        for fn in (roots.confine, lambda p: runtime.resolve_checkpoint(p, confined=True)):
            out["tried"] += 1
            try:
                fn(path)
            except ArchLabError as e:
                out["refused"] += 1
                out["messages"].add(str(e))
    return out


def test_paths_outside_the_roots_are_refused_alike(tree):
    root, outside = tree
    r = probe_roots(root, outside)
    assert r["refused"] == r["tried"] and r["messages"] == {roots.REFUSED}
    assert 0 < r["exists"] < len(_refused_paths(root, outside))  # both kinds were tried
    assert "\n" not in roots.REFUSED and str(outside) not in roots.REFUSED


def test_paths_inside_the_roots_are_taken(tree):
    root, _ = tree
    good = (root / "good").resolve()
    assert roots.confine(str(root / "good")) == good
    assert roots.confine(f"{root}/good/../good") == good
    assert runtime.resolve_checkpoint(str(root / "good"), confined=True) == good
    with pytest.raises(ArchLabError) as e:  # inside a root, saying that it is missing gives nothing away
        runtime.resolve_checkpoint(str(root / "missing"), confined=True)
    assert "not a folder" in str(e.value)
    assert roots.is_allowed(roots.hf_cache() / "models--x--y") and roots.is_allowed(roots.runs_dir() / "abc")


def test_unconfined_callers_keep_any_folder(tree):
    _, outside = tree
    assert runtime.resolve_checkpoint(str(outside / "secret")) == (outside / "secret").resolve()


def test_runs_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_RUNS_DIR", str(tmp_path / "r" / "uns"))
    assert roots.runs_dir() == (tmp_path / "r" / "uns").resolve() and roots.runs_dir().is_dir()
    assert roots.runs_dir() in roots.allowed_roots()
    monkeypatch.delenv("ARCHLAB_RUNS_DIR")
    assert roots.runs_dir() == ROOT / "runs"


def test_pretrained_requests_go_through_the_roots(tree):
    root, outside = tree
    for path in (str(outside / "secret"), "/etc", str(root / "to-outside")):
        with pytest.raises(ArchLabError) as e:
            playground.requests_for([], "pretrained", "auto", checkpoint=path)
        assert str(e.value) == roots.REFUSED


def _app(**query) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_sidebar_checkpoint_folder_refuses_outside_alike(tree):
    root, outside = tree
    at = _app()
    for path in [
        "/etc",
        "/proc/self",
        "../../..",
        str(outside / "secret"),
        str(outside / "nothing"),
        str(root / "to-outside"),
        str(root / "to-nowhere"),
        f"{root}/../outside/secret",
    ]:
        at.sidebar.text_input[0].input(path).run()
        assert not at.exception
        errors = [e.value for e in at.sidebar.error]
        assert errors == [md(roots.REFUSED)], (path, errors)
        assert at.session_state["checkpoint_path"] == ""
    at.sidebar.text_input[0].input(str(root / "good")).run()
    assert not at.exception and not at.sidebar.error
    assert at.session_state["checkpoint_path"] == str((root / "good").resolve())


# ----------------------------------------------------------------- re-attach by link (AppTest)


def _code(at) -> list[str]:
    return [c.value for c in at.code]


def test_a_run_link_reattaches_on_both_pages():
    a = _app(models="deepseek-v3,qwen3-30b-a3b", tokens="12")
    a.switch_page("views/playground.py").run()
    a.button[0].click().run()  # Generate; the page follows the run to its end
    assert not a.exception and not a.error
    run_id = a.query_params["run"]
    assert runs.valid_id(run_id) and a.session_state["pg_run"] == run_id
    texts = _code(a)
    assert len(texts) == 2 and all(t.strip() for t in texts)
    a.switch_page("views/routing.py").run()
    assert not a.exception and a.query_params["run"] == run_id
    figs_a = [c.proto.spec for c in a.get("plotly_chart")]
    assert figs_a

    b = _app(run=run_id)  # another browser session (a new tab) opening the link
    b.switch_page("views/playground.py").run()
    assert not b.exception and not b.error
    assert _code(b) == texts and b.session_state["pg_run"] == run_id
    assert any(f"run\\={md(run_id)}" in c.value for c in b.caption)  # the link is shown
    c = _app(run=run_id)
    c.switch_page("views/routing.py").run()
    assert not c.exception and not c.error
    assert [f.proto.spec for f in c.get("plotly_chart")] == figs_a


def test_a_bad_or_expired_link_is_one_line():
    for bad in ("nonsense", runs.new_id(), "<b>x</b>", "A" * 24):
        for page in ("views/playground.py", "views/routing.py"):
            at = _app(run=bad)
            at.switch_page(page).run()
            assert not at.exception
            assert [e.value for e in at.error] == [runs.NOT_FOUND]
            assert "run" not in at.query_params
    at = _app()  # a session without a link sees no run, whoever has runs going
    at.switch_page("views/routing.py").run()
    assert not at.exception and "pg_run" not in at.session_state


# ----------------------------------------------------------------- visitors' names as text

EVIL = "<img src=x onerror=alert(1)>[a](http:x) **b** :red[c] $d$"


def test_md_and_swatch():
    assert md("a*b_c") == r"a\*b\_c" and md("x\ny") == "x y"
    assert swatch("#2E91E5") == "<span style='color:#2E91E5'>■</span>"
    for bad in ("red", "#12345", "#2E91E5'><script>", EVIL, None):
        with pytest.raises(ValueError):
            swatch(bad)


def test_no_visitor_text_in_unsafe_html_by_construction():
    """Every unsafe_allow_html=True in views/ draws swatch(...) or a constant reviewed here."""
    reviewed = {("architectures.py", "_legend"), ("architectures.py", "_diagrams")}  # colours and fixed names only
    found = []
    for path in sorted((ROOT / "views").glob("*.py")):
        tree = ast.parse(path.read_text())
        fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or not any(
                k.arg == "unsafe_allow_html" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                for k in call.keywords
            ):
                continue
            inner = [f for f in fns if f.lineno <= call.lineno <= f.end_lineno]
            where = (path.name, min(inner, key=lambda f: f.end_lineno - f.lineno).name if inner else "<module>")
            arg = call.args[0] if call.args else None
            is_swatch = isinstance(arg, ast.Call) and getattr(arg.func, "id", getattr(arg.func, "attr", "")) == "swatch"
            found.append(where)
            assert is_swatch or where in reviewed, f"{path.name}:{call.lineno} puts a non-swatch string in unsafe HTML"
    assert ("playground.py", "_column") in found


def test_uploaded_names_never_reach_unsafe_html():
    """An upload named like markup, whose config names itself like markup too, is shown as text on every page."""
    cfg = dict(catalog.raw_config("qwen3-30b-a3b"), _name_or_path=EVIL)
    at = _app(models="deepseek-v3", tokens="4")
    at.sidebar.file_uploader[0].upload(EVIL + ".json", json.dumps(cfg).encode(), "application/json").run()
    assert not at.exception and not at.sidebar.error
    at.switch_page("views/playground.py").run()
    at.button[0].click().run()
    for page in ("views/playground.py", "views/routing.py", "views/architectures.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        bodies = [(m.proto.body, m.proto.allow_html) for m in at.get("markdown")]
        assert not any("onerror" in b for b, html in bodies if html), page
        shown = [b for b, _ in bodies if "onerror" in b]
        if page != "views/routing.py":  # (there the name is in the charts and the model picker)
            assert any(html for _, html in bodies) and shown, page  # swatches, and the name on the page ...
        for b in shown:  # ... as text: no tag, link, emphasis, directive or math can form
            assert "<img" not in b.replace("\\<img", "") and "](" not in b and "**b**" not in b
            assert ":red[" not in b and "$d$" not in b
