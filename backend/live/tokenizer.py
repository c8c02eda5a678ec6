"""The offline tokenizer shipped for random-weight models (miniatures and full-size random).

A byte-level BPE (vocab 4096) trained with the ``tokenizers`` library on Python's own
documentation (``pydoc_data/topics.py``, PSF licence) and a few stdlib modules; it round-trips any
Unicode. The project ships the result in ``assets/tokenizer/``; rebuild it with
``python -m backend.tokenizer --rebuild`` (the training inputs and their SHA-256 are recorded in
``assets/tokenizer/SOURCES.json`` so a rebuild can say whether it saw the same text).
Pretrained checkpoints bring their own tokenizer (see ``runtime``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from ..arch.errors import ArchLabError

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "tokenizer"
VOCAB_SIZE = 4096
EOS = "<|endoftext|>"
PAD = "<|pad|>"
#: Training text, relative to the stdlib directory: documentation prose plus some plain code.
TRAINING_FILES = ("pydoc_data/topics.py", "this.py", "textwrap.py", "string.py", "json/__init__.py",
                  "argparse.py", "dataclasses.py")


def _training_paths() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [stdlib / f for f in TRAINING_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ArchLabError(f"tokenizer training text not found: {', '.join(missing)}")
    return paths


def train(paths: list[Path] | None = None, vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE in memory; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    paths = paths or _training_paths()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [p.read_text(encoding="utf-8") for p in paths]
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1 << 20)


def rebuild(out_dir: Path = TOKENIZER_DIR) -> Path:
    """Train and save the shipped tokenizer (deterministic for the same training text)."""
    paths = _training_paths()
    tok = train(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    sources = {"python": sys.version.split()[0], "vocab_size": VOCAB_SIZE,
               "files": {f: hashlib.sha256(p.read_bytes()).hexdigest() for f, p in zip(TRAINING_FILES, paths)}}
    (out_dir / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    load_offline.cache_clear()
    return out_dir


@lru_cache(maxsize=1)
def load_offline():
    """The shipped offline tokenizer (cached, shared: do not modify)."""
    from transformers import PreTrainedTokenizerFast

    path = TOKENIZER_DIR / "tokenizer.json"
    if not path.is_file():
        raise ArchLabError(f"offline tokenizer missing ({path}); run: python -m backend.tokenizer --rebuild")
    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.tokenizer", description=__doc__.splitlines()[0])
    ap.add_argument("--rebuild", action="store_true", help="retrain and overwrite assets/tokenizer/")
    args = ap.parse_args(argv)
    if args.rebuild:
        out = rebuild()
        print(f"wrote {out} (vocab {len(load_offline())})")
    else:
        tok = load_offline()
        print(f"{TOKENIZER_DIR}: vocab {len(tok)}, eos {tok.eos_token!r}={tok.eos_token_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
