"""Sparse n-gram count matrices shared by all n-gram metrics.

Several tokenised corpora (samples, references) are indexed together, so that n-gram id `g` means
the same token sequence in each of them. For order n, `counts(n, c)` is a CSR matrix with one row
per sentence of corpus `c` and one column per distinct n-gram of all corpora; entry (i, g) is how
often n-gram g occurs in sentence i. N-grams never cross sentence boundaries.

Ids are built without Python tuples: order-1 ids are vocabulary ids; the id of an n-gram is the
rank of the pair (id of its first n-1 tokens, id of its last token) among all such pairs, found
with `np.unique`. Two n-grams get the same id exactly when their token sequences are equal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp


class NgramCounts:
    def __init__(self, corpora: Sequence[Sequence[Sequence[str]]], max_order: int):
        vocab: dict[str, int] = {}
        lengths = np.array([len(s) for corpus in corpora for s in corpus], dtype=np.int64)
        tokens = np.fromiter((vocab.setdefault(t, len(vocab)) for corpus in corpora
                              for sentence in corpus for t in sentence),
                             dtype=np.int64, count=int(lengths.sum()))
        bounds = np.cumsum([0] + [len(corpus) for corpus in corpora])
        self.corpus_rows = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.vocab_size = len(vocab)
        self._lengths = lengths
        self._matrices: list[sp.csr_matrix] = []

        row_of = np.repeat(np.arange(len(lengths)), lengths)  # sentence of every token
        room = lengths[row_of] - (np.arange(len(tokens)) - (np.cumsum(lengths) - lengths)[row_of])
        positions = np.arange(len(tokens))  # start positions of the current order's n-grams
        ids = tokens
        for n in range(1, max_order + 1):
            if n > 1:
                keep = room[positions] >= n  # an n-gram fits between start and sentence end
                positions, prev = positions[keep], ids[keep]
                if prev.size and (int(prev.max()) + 1) * max(self.vocab_size, 1) >= 2**62:
                    raise ValueError(f"too many distinct {n - 1}-grams to index {n}-grams")
                _, ids = np.unique(prev * self.vocab_size + tokens[positions + n - 1],
                                   return_inverse=True)
                ids = ids.astype(np.int64).ravel()
            n_ids = int(ids.max()) + 1 if ids.size else 0
            matrix = sp.csr_matrix((np.ones(ids.size, dtype=np.int64), (row_of[positions], ids)),
                                   shape=(len(lengths), n_ids))
            matrix.sum_duplicates()
            self._matrices.append(matrix)

    @property
    def max_order(self) -> int:
        return len(self._matrices)

    def counts(self, order: int, corpus: int) -> sp.csr_matrix:
        """Sentences x n-gram ids count matrix of `corpus` for n-gram `order`."""
        if not 1 <= order <= self.max_order:
            raise ValueError(f"order {order} not indexed (max_order={self.max_order})")
        start, stop = self.corpus_rows[corpus]
        return self._matrices[order - 1][start:stop]

    def lengths(self, corpus: int) -> np.ndarray:
        """Token count of every sentence of `corpus`."""
        start, stop = self.corpus_rows[corpus]
        return self._lengths[start:stop]


def row_of_entries(matrix: sp.csr_matrix) -> np.ndarray:
    """The row index of every stored entry of a CSR matrix, aligned with `.data`/`.indices`."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


def row_sums(matrix: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Exact integer sum per row of `values` (aligned with the matrix's stored entries)."""
    sums = np.zeros(matrix.shape[0], dtype=np.int64)
    np.add.at(sums, row_of_entries(matrix), values.astype(np.int64))
    return sums
