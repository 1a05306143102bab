"""A deterministic local embedding, used ONLY as the embedding function under test for pgvector.

Words are hashed into a fixed number of buckets and the vector normalised, so texts
sharing words are close. It stands in for a provider's embedding model, which tests
cannot reach; the store, pgvector and the search are real.
"""

from __future__ import annotations

import hashlib
import math
import re

from langchain_core.embeddings import Embeddings

DIMS = 64


class HashEmbeddings(Embeddings):
    """Bag-of-words hashed into DIMS buckets, L2-normalised."""

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * DIMS
        for word in re.findall(r"\w+", text.lower()):
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMS] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed each text."""
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query like a document."""
        return self._embed(text)
