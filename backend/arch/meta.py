"""Full-size models on the meta device: shapes without memory, built once per config."""
from __future__ import annotations

import logging
import threading
from functools import lru_cache

from .configs import ModelSource, _build, canonical
from .errors import ArchLabError


#: Held while transformers constructs a model: it switches torch's process-wide default dtype to the config's
#: (bf16 for most) during construction, so a build in another thread would get tensors of the wrong dtype.
BUILD_LOCK = threading.RLock()


@lru_cache(maxsize=64)
def _meta_model(canon: str):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = _build(canon)
    # Quiet transformers' config warnings (e.g. Llama 4's rope factors) while building.
    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    try:
        # Not accelerate.init_empty_weights: it allocates fused expert tensors and unties embeddings.
        with BUILD_LOCK, torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:
        raise ArchLabError(f"transformers has no causal-LM class for {cfg.model_type!r}: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:
        raise ArchLabError(f"could not build a {cfg.model_type} model from this config: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    finally:
        tlog.setLevel(level)
    model.eval()
    return model


def meta_model(source: ModelSource):
    """The full-size model of a source on the meta device (cached, shared: do not modify)."""
    return _meta_model(canonical(source))


def decoder_layers(model) -> list:
    """The repeated decoder blocks of a causal LM, whatever the attribute is called."""
    for base in (base_model(model), model):
        for name in ("layers", "h", "blocks", "decoder_layers"):
            layers = getattr(base, name, None)
            if layers is not None:
                return list(layers)
    raise ArchLabError(f"cannot find the decoder layers of {type(model).__name__}")


def base_model(model):
    """The decoder stack under the LM head (``model.model``, ``model.transformer``, ...)."""
    for name in (model.base_model_prefix, "model", "transformer"):
        base = getattr(model, name, None)
        if base is not None and base is not model:
            return base
    return model
