"""BM25 product search (bm25s), indexing the same text upstream puts into its Lucene index.

Upstream (``search_engine/convert_product_file_format.py``) indexes, lowercased, ``Title``, ``Description``,
the first bullet point and ``"name: v1, v2, and name: ..."`` of the options, and searches with pyserini's
BM25 (k1=0.9, b=0.4) for the top 50. We use the same document text and parameters with bm25s's Lucene
variant and Lucene's English stop words. Differences from upstream: no Porter stemming (PyStemmer is not a
dependency), so ``shoe`` does not match ``shoes``; ties are broken by catalogue order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

__all__ = ["SEARCH_RETURN_N", "ProductSearch", "document_text", "instruction_keywords", "tokenize"]

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


class ProductSearch:
    """A BM25 index over products; :meth:`search` returns product positions, best first."""

    def __init__(self, products: Sequence[dict[str, Any]], k1: float = 0.9, b: float = 0.4):
        self.size = len(products)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        corpus = [tokenize(document_text(p)) or [""] for p in products]
        self._bm25.index(corpus, show_progress=False)
        self._vocab = self._bm25.vocab_dict

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
