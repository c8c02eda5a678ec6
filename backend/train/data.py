"""Training data as token streams, and the batch stream every model of a run consumes.

Three kinds of data, each a :class:`TokenData` (train and validation token ids plus the vocabulary):
the shipped corpus (tokenized with the shipped tokenizer), a user's UTF-8 ``.txt`` upload (same
tokenizer, the last ``HELD_OUT`` of its lines held out), and synthetic probes (``probes.py``).
:class:`BatchStream` draws batch ``i`` from ``(seed, i)`` alone, so every model of a run reads the same
batches in the same order, and :class:`StreamHash` fingerprints what a model actually consumed.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from ..arch.errors import ArchLabError
from . import corpus

#: Upload limits: at least this much text to train on, at most this many bytes.
MIN_UPLOAD_CHARS = 20_000
MAX_UPLOAD_BYTES = 20_000_000
#: A token budget may read the training split at most this many times over.
MAX_EPOCHS = 100


@dataclass(frozen=True)
class TokenData:
    """Token ids to train on and to validate with."""

    name: str
    train: np.ndarray  # int32 token ids
    validation: np.ndarray  # int32 token ids
    vocab_size: int
    text: bool = True  # natural text (shipped tokenizer) rather than a synthetic probe
    sha256: str = ""  # of the train + validation ids

    def describe(self) -> str:
        return f"{self.name}: {len(self.train):,} training and {len(self.validation):,} validation tokens, vocab {self.vocab_size:,}"


def _ids(text: str) -> np.ndarray:
    from ..live.tokenizer import load_offline

    tok = load_offline()
    chunks = text.split("\n\n")  # encode paragraph by paragraph (fast, and a blank line stays a separator)
    out = tok(["\n\n".join(chunks[i : i + 256]) + "\n\n" for i in range(0, len(chunks), 256)]).input_ids
    return np.concatenate([np.asarray(x, dtype=np.int32) for x in out]) if out else np.zeros(0, np.int32)


def _fingerprint(train: np.ndarray, validation: np.ndarray) -> str:
    h = hashlib.sha256(train.tobytes())
    h.update(validation.tobytes())
    return h.hexdigest()


def _vocab() -> int:
    from ..live.tokenizer import load_offline

    return len(load_offline())


CORPUS_NAME = "corpus (Shakespeare + King James Bible)"


_corpus_lock = threading.Lock()


def corpus_data() -> TokenData:
    """The shipped corpus, tokenized (see :func:`_corpus_data`); one thread tokenizes, the others wait."""
    with _corpus_lock:
        return _corpus_data()


@lru_cache(maxsize=1)
def _corpus_data() -> TokenData:
    """The shipped corpus, tokenized (cached in memory, and on disk under the runs directory keyed by the
    corpus and tokenizer files, so worker processes and restarts skip the tokenizing)."""
    from ..live.roots import runs_dir
    from ..live.tokenizer import TOKENIZER_DIR

    key = hashlib.sha256(corpus.CORPUS_FILE.read_bytes() + (TOKENIZER_DIR / "tokenizer.json").read_bytes()).hexdigest()
    cache = runs_dir() / "cache" / f"corpus-{key[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            train, val = z["train"], z["validation"]
    else:
        s = corpus.split()
        train, val = _ids(s.train), _ids(s.validation)
        save_tokens(cache, train, val)
    return TokenData(CORPUS_NAME, train, val, _vocab(), True, _fingerprint(train, val))


def save_tokens(path, train: np.ndarray, validation: np.ndarray) -> None:
    """Write token ids atomically (``np.savez``), for other processes to :func:`load_tokens`."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
    np.savez(tmp, train=train, validation=validation)
    os.replace(tmp, path)


def load_tokens(path, name: str) -> TokenData:
    """Token data saved by :func:`save_tokens` (a worker process reading what its parent prepared)."""
    with np.load(path) as z:
        train, val = z["train"], z["validation"]
    return TokenData(name, train, val, _vocab(), True, _fingerprint(train, val))


def text_data(data: bytes, name: str = "upload") -> TokenData:
    """A user's UTF-8 text: one-line ArchLabError for binary, non-UTF-8, too small or too large input."""
    if not isinstance(data, (bytes, bytearray)):
        raise ArchLabError("the upload must be a .txt file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ArchLabError(f"{name} is {len(data):,} bytes; uploads take at most {MAX_UPLOAD_BYTES:,}")
    if b"\x00" in data[:65536]:
        raise ArchLabError(f"{name} looks binary (it holds NUL bytes); upload UTF-8 text")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArchLabError(f"{name} is not UTF-8 text (byte {e.start:,} is not valid UTF-8)") from None
    if len(text.strip()) < MIN_UPLOAD_CHARS:
        raise ArchLabError(
            f"{name} has {len(text.strip()):,} characters; a training set needs at least {MIN_UPLOAD_CHARS:,}"
        )
    train_text, val_text = corpus.split_document(text)
    train, val = _ids(train_text), _ids(val_text)
    return TokenData(name, train, val, _vocab(), True, _fingerprint(train, val))


def check_enough(data: TokenData, tokens: int, seq_len: int) -> None:
    """ArchLabError (one line) when ``data`` is too small for a run of ``tokens`` tokens of ``seq_len``."""
    if len(data.validation) < seq_len + 2:
        raise ArchLabError(
            f"{data.name} holds out only {len(data.validation):,} validation tokens, fewer than one "
            f"sequence of {seq_len + 1}: use more text or a shorter sequence length"
        )
    epochs = tokens / max(1, len(data.train))
    if epochs > MAX_EPOCHS:
        raise ArchLabError(
            f"{data.name} has {len(data.train):,} training tokens; {tokens:,} tokens would read it "
            f"{epochs:,.0f} times (at most {MAX_EPOCHS}): use more text or train on fewer tokens"
        )


class StreamHash:
    """SHA-256 over every batch a model consumed, in order: equal hashes = byte-identical batch streams."""

    def __init__(self):
        self._h = hashlib.sha256()
        self.batches = 0

    def update(self, batch: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(batch, dtype="<i4").tobytes())
        self.batches += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class BatchStream:
    """Batch ``i`` of a run: ``batch`` windows of ``seq_len + 1`` tokens at offsets drawn from ``(seed, i)``.

    Random access by step, so any model (in any process) gets the same batch for the same step.
    """

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int, seed: int):
        if len(tokens) < seq_len + 2:
            raise ArchLabError(f"the data has {len(tokens):,} tokens, fewer than one sequence of {seq_len + 1}")
        self.tokens, self.batch, self.seq_len, self.seed = tokens, batch, seq_len, seed

    def __getitem__(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch)
        return self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]


def validation_windows(tokens: np.ndarray, seq_len: int, limit: Optional[int] = None) -> np.ndarray:
    """Consecutive, non-overlapping windows of ``seq_len + 1`` tokens over the validation ids (at most ``limit``)."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise ArchLabError(f"the validation split has {len(tokens):,} tokens, fewer than one sequence of {seq_len + 1}")
    if limit:
        n = min(n, limit)
    return np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
