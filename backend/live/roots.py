"""Where model folders may come from: the allowed roots, and the runs directory.

Visitors name checkpoint folders; the server opens only those under an allowed root: the Hugging Face hub
cache, the runs directory, and the folders in ``ARCHLAB_MODEL_DIRS`` (``os.pathsep``-separated). A path is
resolved first (``~``, symlinks, ``..``), then checked; anything outside is refused with :data:`REFUSED`, one
line that is the same for every refused path, whether it exists or not. The command line (run by the
server's own user) does not go through this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..arch.errors import ArchLabError

REPO = Path(__file__).resolve().parents[2]
#: The one line for a folder outside the allowed roots (it says nothing about the path).
REFUSED = (
    "Refused: checkpoints load only from this server's model folders (its Hugging Face cache, its runs "
    "folder and the folders its operator lists in ARCHLAB_MODEL_DIRS)."
)


def runs_dir() -> Path:
    """Where runs are written (``ARCHLAB_RUNS_DIR``, default ``<repo>/runs``); created when missing."""
    raw = os.environ.get("ARCHLAB_RUNS_DIR", "").strip()
    path = Path(os.path.realpath(os.path.expanduser(raw))) if raw else REPO / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE`` / ``HF_HOME``, as huggingface_hub reads them)."""
    from huggingface_hub import constants

    return Path(os.path.realpath(os.path.expanduser(constants.HF_HUB_CACHE)))


def allowed_roots() -> list[Path]:
    """The folders checkpoints may come from, resolved: HF cache, runs directory, ``ARCHLAB_MODEL_DIRS``."""
    extra = [p.strip() for p in os.environ.get("ARCHLAB_MODEL_DIRS", "").split(os.pathsep) if p.strip()]
    roots = [hf_cache(), runs_dir()] + [Path(os.path.realpath(os.path.expanduser(p))) for p in extra]
    return list(dict.fromkeys(roots))


def _resolved(path: Union[str, Path]) -> Path:
    """``path`` with ``~``, symlinks and ``..`` resolved (no error for a path that does not exist)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_allowed(path: Union[str, Path]) -> bool:
    """True when ``path``, resolved, lies under (or is) an allowed root."""
    try:
        p = _resolved(path)
    except (OSError, ValueError, TypeError):  # embedded NUL, name too long, not a path
        return False
    return any(p == root or p.is_relative_to(root) for root in allowed_roots())


def confine(path: Union[str, Path]) -> Path:
    """The resolved folder path when it lies under an allowed root, else ArchLabError(:data:`REFUSED`).

    Nothing about ``path`` is looked at beyond resolving it before the check: whether it exists and what
    it holds are the caller's business once it is known to be inside.
    """
    if not isinstance(path, (str, Path)) or not str(path).strip() or not is_allowed(str(path).strip()):
        raise ArchLabError(REFUSED)
    return _resolved(str(path).strip())
