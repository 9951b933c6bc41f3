"""BM25 product search (bm25s), indexing the same text upstream puts into its Lucene index.

Upstream (``search_engine/convert_product_file_format.py``) indexes, lowercased, ``Title``, ``Description``,
the first bullet point and ``"name: v1, v2, and name: ..."`` of the options, and searches with pyserini's
BM25 (k1=0.9, b=0.4) for the top 50. We use the same document text and parameters with bm25s's Lucene
variant and Lucene's English stop words. Differences from upstream: no Porter stemming (PyStemmer is not a
dependency), so ``shoe`` does not match ``shoes``; ties are broken by catalogue order.

Large catalogues (upstream's full file has 1.18M products) are indexed once: :meth:`ProductSearch.cached`
saves the index under the user cache, keyed by a hash of the indexed text and the BM25 parameters, and every
later process (another run, another rank, a ``compare`` worker) memory-maps it. The first process to start
building holds a lock file; the others wait for the finished index (published by an atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

__all__ = ["SEARCH_RETURN_N", "ProductSearch", "document_text", "index_cache_dir", "instruction_keywords", "tokenize"]

INDEX_FORMAT = "bm25s-lucene-v1"  # bump when the indexed text or tokenisation changes

SEARCH_RETURN_N = 50
_TOKEN = re.compile(r"\w+")
_STOP = frozenset(STOPWORDS_EN)


def document_text(product: dict[str, Any]) -> str:
    """The indexed text of a processed product, as upstream builds it."""
    option_texts = [f"{name}: {', '.join(values)}" for name, values in product.get("options", {}).items()]
    bullets = product.get("BulletPoints") or [""]
    return " ".join([product["Title"], product["Description"], str(bullets[0]), ", and ".join(option_texts)]).lower()


def instruction_keywords(instruction: str) -> str:
    """The words of a goal instruction without its price clause (what the expert searches for)."""
    return instruction.split(", and price lower than")[0].strip().lower()


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens without Lucene's English stop words."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


def index_cache_dir() -> Path:
    """``<cache root>/webshop/index`` (``$PRISM_LIT_CACHE`` or ``~/.cache/prism_lit``, as for ALFWorld games)."""
    from prism_lit.envs.cache import cache_root

    return cache_root() / "webshop" / "index"


class ProductSearch:
    """A BM25 index over products; :meth:`search` returns product positions, best first."""

    def __init__(self, products: Sequence[dict[str, Any]], k1: float = 0.9, b: float = 0.4):
        self.size = len(products)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        corpus = [tokenize(document_text(p)) or [""] for p in products]
        self._bm25.index(corpus, show_progress=False)
        self._vocab = self._bm25.vocab_dict

    @classmethod
    def cached(cls, products: Sequence[dict[str, Any]], k1: float = 0.9, b: float = 0.4,
               cache_dir: str | os.PathLike | None = None, wait_seconds: float = 3600.0) -> ProductSearch:
        """The index of ``products`` from the cache (memory-mapped), built and saved there first if missing."""
        digest = hashlib.sha256(f"{INDEX_FORMAT} k1={k1} b={b}\n".encode())
        for p in products:
            digest.update(document_text(p).encode("utf-8"))
            digest.update(b"\0")
        root = Path(cache_dir) if cache_dir is not None else index_cache_dir()
        target = root / f"{len(products)}-{digest.hexdigest()[:20]}"
        lock = target.with_name(target.name + ".lock")
        deadline = time.monotonic() + wait_seconds
        while not (target / "done.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # another process is building it
                if time.monotonic() > deadline:
                    raise TimeoutError(f"WebShop search index: waited {wait_seconds:.0f} s for {target} (lock "
                                       f"{lock}); if no process is building it, delete the lock file") from None
                time.sleep(1.0)
                continue
            try:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                cls(products, k1=k1, b=b)._save(target)
            finally:
                lock.unlink(missing_ok=True)
        return cls._load(target, len(products))

    def _save(self, target: Path) -> None:
        from prism_lit.io import atomic_directory

        with atomic_directory(target) as tmp:
            self._bm25.save(str(tmp), show_progress=False)
            (tmp / "done.json").write_text(json.dumps({"format": INDEX_FORMAT, "size": self.size}) + "\n")

    @classmethod
    def _load(cls, target: Path, size: int) -> ProductSearch:
        search = cls.__new__(cls)
        search.size = size
        search._bm25 = bm25s.BM25.load(str(target), mmap=True, show_progress=False, verbosity=0)
        search._vocab = search._bm25.vocab_dict
        return search

    def search(self, keywords: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Positions of at most ``k`` products matching at least one query term, by BM25 score."""
        ids = [self._vocab[t] for t in tokenize(keywords) if t in self._vocab and t != ""]
        if not ids or self.size == 0:
            return []
        scores = np.asarray(self._bm25.get_scores(ids), dtype=np.float64)
        hits = np.flatnonzero(scores > 0)
        if hits.size > k:
            # keep every product tied with the k-th score, then order by (-score, position)
            kth = np.partition(scores[hits], hits.size - k)[hits.size - k]
            hits = hits[scores[hits] >= kth]
        order = np.lexsort((hits, -scores[hits]))
        return hits[order][:k].tolist()
