"""Retrain the shipped tokenizer on the corpus: ``python -m backend.train.tokenizer_build``.

Byte-level BPE of ``VOCAB_SIZE`` entries trained on the corpus's training split only (the validation split
stays unseen). Deterministic for the same corpus; ``assets/tokenizer/SOURCES.json`` records the corpus hash.
"""

from __future__ import annotations

import hashlib
import json
import sys

from ..live.tokenizer import EOS, PAD, TOKENIZER_DIR, load_offline, wrap
from . import corpus

VOCAB_SIZE = 2048


def train(text: str, vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE trained on ``text``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return wrap(tok)


def rebuild() -> None:
    """Train on the corpus and save to ``assets/tokenizer/`` with its SOURCES.json."""
    text = corpus.split().train
    tok = train(text)
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(TOKENIZER_DIR))
    sources = {
        "vocab_size": VOCAB_SIZE,
        "kind": "byte-level BPE (tokenizers)",
        "trained_on": "training split of assets/corpus/documents.jsonl.xz",
        "corpus_train_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "rebuild": "python -m backend.train.tokenizer_build",
    }
    (TOKENIZER_DIR / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    load_offline.cache_clear()


if __name__ == "__main__":
    rebuild()
    tok = load_offline()
    ids = tok(corpus.split().validation).input_ids
    print(
        f"wrote {TOKENIZER_DIR}: vocab {len(tok)}; validation split {len(corpus.split().validation):,} characters "
        f"-> {len(ids):,} tokens ({len(corpus.split().validation) / len(ids):.2f} characters a token)"
    )
    sys.exit(0)
