"""``python -m backend train``: the Experiments page's training from the command line (same run folder).

    python -m backend train --models deepseek-v3,llama3-8b --data corpus --budget 4M --tokens 20M \\
        --device auto --runs-dir runs
    python -m backend train --spec run.json              # a run spec written by --save-spec (any scheduler)
    accelerate launch --num_processes 8 -m backend train ...   # each model over 8 GPUs with DDP (or torchrun;
                                                               # add --num_machines/--machine_rank for several)

``--budget`` is in non-embedding active parameters unless ``--metric`` says otherwise; ``k``/``M``/``G``
suffixes are accepted. ``--data`` is ``corpus``, ``mqar``, ``distance`` or the path of a UTF-8 ``.txt``.
With several GPUs the models train one per GPU in separate processes, at the same time (``--processes``).
Under ``accelerate launch`` or ``torchrun`` every process trains each model in turn with DDP on its rows of
the same global batches (the batch must divide by the processes); rank 0 writes the one run folder and
prints (``distributed.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from ..arch import catalog
from ..arch.configs import parse_config_text
from ..arch.errors import ArchLabError
from .recipe import DATA_KINDS, PRESETS, RunSpec, parse_amount, preset


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train architectures on equal footing (same data, budget and recipe)")
    t.add_argument("--models", help="comma-separated catalog keys or config.json paths (2–8 to compare)")
    t.add_argument("--data", default="corpus", help="corpus, mqar, distance, or a UTF-8 .txt file")
    t.add_argument("--budget", help="per-model budget, e.g. 4M (default: the preset's)")
    t.add_argument(
        "--metric",
        default=None,
        choices=("active", "total", "flops"),
        help="what the budget counts: non-embedding active (default) or total parameters, or training FLOPs per token",
    )
    t.add_argument("--tokens", help="training tokens per model, e.g. 20M")
    t.add_argument(
        "--preset", default=None, choices=sorted(PRESETS), help="base recipe (default: small on a GPU, tiny on the CPU)"
    )
    t.add_argument("--batch", type=int)
    t.add_argument("--seq-len", type=int)
    t.add_argument("--layers", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    t.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes training models at once (default: one per GPU when there are several, else 0 = in turn)",
    )
    t.add_argument("--runs-dir", default=None, help="where the run folder goes (default: ARCHLAB_RUNS_DIR or runs/)")
    t.add_argument("--spec", default=None, help="a run-spec JSON (from --save-spec); the flags above are then ignored")
    t.add_argument("--save-spec", default=None, help="write the run spec to this file and exit")
    t.add_argument(
        "--zoo",
        action="store_true",
        help="train every catalog architecture with the zoo recipe and write assets/zoo (GPU)",
    )
    t.add_argument("--zoo-out", default=None, help="with --zoo: where to write the zoo (default assets/zoo)")
    t.add_argument("--seeds", default="0,1,2", help="with --zoo: seeds of the leaderboard runs")
    t.add_argument("--parallel", type=int, default=16, help="with --zoo: runs at once, each in a worker process")
    t.add_argument(
        "--fill",
        action="store_true",
        help="with --zoo: train only the seeds' runs the zoo lacks and rebuild its leaderboard",
    )


def _models(text: str) -> tuple:
    out = []
    for item in [x.strip() for x in (text or "").split(",") if x.strip()]:
        if item.endswith(".json"):
            path = Path(item)
            if not path.is_file():
                raise ArchLabError(f"no such config file: {item}")
            d = parse_config_text(path.read_bytes())
            d.setdefault("_name_or_path", path.stem)
            out.append(d)
        else:
            catalog.get(item)  # unknown keys fail here with a hint
            out.append(item)
    if not out:
        raise ArchLabError("--models needs at least one catalog key or config.json path")
    return tuple(out)


def recipe_from_args(a, fields: tuple[str, ...]) -> tuple:
    """The recipe the common flags describe (``--preset``, ``--data``, ``--budget``, ``--metric``, ``--tokens`` and
    the recipe ``fields`` given as flags of the same name) and the uploaded text data when ``--data`` is a file."""
    import torch

    from . import data as data_mod

    base = preset(a.preset or ("small" if torch.cuda.is_available() and a.device != "cpu" else "tiny"))
    upload, kind = None, a.data
    if kind not in DATA_KINDS or kind == "upload":
        path = Path(kind)
        if not path.is_file():
            raise ArchLabError(f"--data must be one of corpus, mqar, distance or a .txt file; {kind!r} is none")
        upload = data_mod.text_data(path.read_bytes(), path.name)
        kind = "upload"
    over = {"data": kind}
    if a.budget is not None:
        over["budget"] = parse_amount(a.budget)
    if a.metric is not None:
        over["budget_metric"] = a.metric
    if a.tokens is not None:
        over["tokens"] = int(parse_amount(a.tokens))
    over.update({f: getattr(a, f) for f in fields if getattr(a, f) is not None})
    return replace(base, **over).validate(), upload


def spec_from_args(a) -> tuple[RunSpec, "object | None"]:
    """The run spec (and uploaded text data, if ``--data`` is a file) the flags describe."""
    from . import data as data_mod

    if a.spec:
        path = Path(a.spec)
        if not path.is_file():
            raise ArchLabError(f"no such run spec: {a.spec}")
        return RunSpec.from_json(path.read_bytes()), None
    recipe, upload = recipe_from_args(a, ("batch", "seq_len", "layers", "lr", "seed", "precision"))
    if a.compile:
        recipe = replace(recipe, compile=True).validate()
    if upload is not None:
        data_mod.check_enough(upload, recipe.tokens, recipe.seq_len)
    return RunSpec(_models(a.models), recipe, a.device).validate(), upload


def _fmt_s(s) -> str:
    return "—" if s is None else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def run(a) -> int:
    """Run a training from parsed flags; prints progress and the final table. Returns the exit status."""
    from . import distributed

    if not distributed.launched():
        return _run(a, False)
    try:
        distributed.refuse(zoo=a.zoo, processes=a.processes)
        return _run(a, True)
    except ArchLabError:
        if distributed.rank():  # every process meets the same error: rank 0 says it, once
            return 2
        raise


def _run(a, launched: bool) -> int:
    from . import distributed
    from .runner import TrainingRun, default_processes, start_distributed

    if a.zoo:
        return _zoo(a)
    spec, upload = spec_from_args(a)
    main = not launched or distributed.rank() == 0
    say = print if main else (lambda *_, **__: None)
    if a.save_spec:
        if main:
            Path(a.save_spec).write_text(spec.to_json() + "\n")
        say(f"wrote {a.save_spec}")
        return 0
    if a.runs_dir:
        os.environ["ARCHLAB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    group = None
    if launched:
        distributed.check(spec)
        group = distributed.init(spec.device)
    ok = False
    try:
        if group is not None:
            run = start_distributed(spec, upload, group)
        else:
            processes = a.processes if a.processes is not None else default_processes(spec.device, len(spec.models))
            run = TrainingRun(spec, upload=upload, processes=processes).start()
        say(
            f"run {run.id}: {len(spec.models)} model(s), {spec.recipe.tokens:,} tokens each, folder {run.folder}"
            + (f", DDP over {group.world} processes" if group is not None else ""),
            flush=True,
        )
        last = 0.0
        try:
            while run.running:
                run.join(1.0)
                if main and (time.monotonic() - last >= 10 or not run.running):
                    last = time.monotonic()
                    for m in run.view().models:
                        loss = "" if m.train_loss is None else f" train {m.train_loss:.3f}"
                        val = "" if m.val_loss is None else f" val {m.val_loss:.3f}"
                        speed = "" if m.tok_s is None else f" {m.tok_s:,.0f} tok/s"
                        err = f" ({m.error})" if m.error else ""
                        print(
                            f"  {m.key:22s} {m.status:10s} step {m.step}/{m.steps}{loss}{val}{speed} "
                            f"ETA {_fmt_s(m.eta_s)}{err}",
                            flush=True,
                        )
        except KeyboardInterrupt:
            say("stopping (checkpoints trained so far are kept)…", flush=True)
            run.cancel()
            run.join()
        v = run.view()
        if v.results and main:
            import pandas as pd

            cols = [
                "model",
                "status",
                "val_loss",
                "perplexity",
                "probe_accuracy",
                "nonemb_active_params",
                "total_params",
                "tok_s",
                "train_seconds",
            ]
            df = pd.DataFrame(v.results)
            print(df[[c for c in cols if c in df and df[c].notna().any()]].to_string(index=False))
        say(f"{v.status}: {v.folder}" + (f" ({v.message})" if v.message else ""))
        if v.status == "failed":
            raise ArchLabError(v.message or "the run failed")
        ok = True
    finally:
        if group is not None:
            group.close(ok)
    return 0


def _zoo(a) -> int:
    """``--zoo``: the zoo recipe (flags --tokens/--budget/--seed... override it), every catalog architecture
    unless --models names some."""
    from . import zoo

    over = {}
    if a.tokens is not None:
        over["tokens"] = int(parse_amount(a.tokens))
    if a.budget is not None:
        over["budget"] = parse_amount(a.budget)
    for flag in ("batch", "seq_len", "layers", "lr"):
        if getattr(a, flag) is not None:
            over[flag] = getattr(a, flag)
    recipe = preset("zoo", **over)
    try:
        seeds = tuple(int(s) for s in a.seeds.split(",") if s.strip())
    except ValueError:
        raise ArchLabError(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
    keys = [k for k in _models(a.models)] if a.models else None
    if a.runs_dir:
        os.environ["ARCHLAB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    if a.fill:
        zoo.fill(
            Path(a.zoo_out) if a.zoo_out else None,
            seeds or (0,),
            parallel=a.parallel,
            log=lambda s: print(s, flush=True),
        )
        return 0
    out = zoo.build(
        Path(a.zoo_out) if a.zoo_out else None,
        recipe,
        seeds or (0,),
        keys,
        processes=a.processes if a.processes is not None else 1,
        parallel=a.parallel,
        log=lambda s: print(s, flush=True),
    )
    print(f"wrote {out}")
    return 0
