"""Full-size models on the meta device: shapes without memory, built once per config."""

from __future__ import annotations

import contextlib
import logging
import threading

from . import libs
from .errors import ArchLabError

#: Held while transformers constructs a model: it switches torch's process-wide default dtype to the config's
#: (bf16 for most) during construction, so a build in another thread would get tensors of the wrong dtype.
BUILD_LOCK = threading.RLock()


@contextlib.contextmanager
def building():
    """Hold :data:`BUILD_LOCK` for a model build, with transformers' model code imported before (not under) it."""
    libs.load_models()
    with BUILD_LOCK:
        yield


def build_meta_model(cfg):
    """The full-size model of a validated config on the meta device, its patches applied (``Architecture`` keeps it)."""
    libs.load()
    import torch

    from .patches import from_config

    # Quiet transformers' config warnings (e.g. Llama 4's rope factors) while building.
    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    try:
        # Not accelerate.init_empty_weights: it allocates fused expert tensors and unties embeddings.
        with building(), torch.device("meta"):
            model = from_config(cfg)  # with the patches the config lists (backend.arch.patches)
    except ArchLabError:
        raise
    except ValueError as e:
        raise ArchLabError(
            f"transformers has no causal-LM class for {cfg.model_type!r}: {str(e).splitlines()[0][:200]}"
        ) from None
    except Exception as e:
        raise ArchLabError(
            f"could not build a {cfg.model_type} model from this config: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    finally:
        tlog.setLevel(level)
    model.eval()
    return model
