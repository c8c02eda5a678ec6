"""The offline tokenizer shipped in ``assets/tokenizer/``: every miniature and random-weight model uses it,
and every trained miniature ships it beside its weights.

A byte-level BPE (vocab 2048, so any Unicode round-trips) trained with the ``tokenizers`` library on the
training split of the shipped corpus (Shakespeare and the King James Bible, ``assets/corpus/``).
``python -m backend.train.tokenizer_build`` retrains it deterministically and records what it saw in
``assets/tokenizer/SOURCES.json``. Pretrained checkpoints bring their own tokenizer (see ``runtime``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..arch import libs
from ..arch.errors import ArchLabError

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "tokenizer"
EOS = "<|endoftext|>"
PAD = "<|pad|>"


def wrap(tok):
    """A ``tokenizers.Tokenizer`` as the ``PreTrainedTokenizerFast`` the runtime uses."""
    libs.load()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None, model_max_length=1 << 20
    )


@lru_cache(maxsize=1)
def load_offline():
    """The shipped offline tokenizer (cached, shared: do not modify)."""
    libs.load()
    from transformers import PreTrainedTokenizerFast

    path = TOKENIZER_DIR / "tokenizer.json"
    if not path.is_file():
        raise ArchLabError(f"offline tokenizer missing ({path}); run: python -m backend.train.tokenizer_build")
    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
