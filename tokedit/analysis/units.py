"""The units n-grams are counted over: model token ids, or words.

* ``tokens``: the ids of the prior's tokenizer. Scores directories give them directly
  (``token_ids``); text is tokenized with the same tokenizer (no special tokens), exactly as
  ``tokedit score`` does, so a dataset and its scores count the same n-grams.
* ``words``: ``WORD_PATTERN`` (a run of word characters, or one character that is neither
  a word character nor whitespace) over the lower-cased text (Unicode lower-casing, Unicode
  ``\\w``). Scores directories are decoded to text with their tokenizer first. Word ids are
  assigned in order of first appearance by a vocabulary that grows batch by batch (a polars
  join, no per-word Python).

Both turn a list of texts into flat ``uint32`` ids plus per-document lengths.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from tokedit.errors import InputError, arg

WORD_PATTERN = r"\w+|[^\w\s]"
MAX_ID_LIMIT = 2**32 - 1  # ids are uint32; the all-ones value is the counters' sentinel


def flat_list(lists: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Flat values (arrow, nulls kept) and per-row lengths of a list column (null rows: 0)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lists.flatten(), lengths


class WordUnits:
    """Lower-cased ``WORD_PATTERN`` words with a growing vocabulary."""

    kind = "words"
    id_limit = MAX_ID_LIMIT

    def __init__(self):
        self._vocab = pl.DataFrame(schema={"word": pl.String, "id": pl.UInt32})
        self._words: list[pl.Series] = []

    @property
    def vocab_size(self) -> int:
        return self._vocab.height

    def split(self, texts: list[str]) -> pl.Series:
        """The words of each text, as a polars list column."""
        return pl.Series(texts, dtype=pl.String).str.to_lowercase().str.extract_all(WORD_PATTERN)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        lists = self.split(texts)
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        words = lists.explode().drop_nulls()
        if len(words) != int(lengths.sum()):  # explode's treatment of [] differs across versions
            words = lists.list.explode(keep_nulls=False, empty_as_null=False)
        frame = words.to_frame("word")
        joined = frame.join(self._vocab, on="word", how="left", maintain_order="left")
        missing = joined.filter(pl.col("id").is_null())["word"].unique(maintain_order=True)
        if len(missing):
            start = self._vocab.height
            if start + len(missing) >= self.id_limit:
                raise InputError(
                    "more than 2**32 distinct words",
                    remedy=f"report on a sample with {arg('max_docs')}",
                )
            new = pl.DataFrame(
                {
                    "word": missing,
                    "id": pl.Series(np.arange(start, start + len(missing), dtype=np.uint32)),
                }
            )
            self._vocab = pl.concat([self._vocab, new])
            self._words.append(missing)
            joined = frame.join(self._vocab, on="word", how="left", maintain_order="left")
        return joined["id"].to_numpy().astype(np.uint32), lengths

    def unit_texts(self, ids: np.ndarray) -> list[str]:
        if len(self._words) != 1:
            self._words = [
                pl.concat(self._words) if self._words else pl.Series([], dtype=pl.String)
            ]
        return self._words[0].gather(np.asarray(ids, dtype=np.int64)).to_list()

    def decode_ngram(self, ids: np.ndarray) -> str:
        return " ".join(self.unit_texts(ids))

    def describe(self) -> dict:
        return {
            "kind": "words",
            "pattern": WORD_PATTERN,
            "lowercase": True,
            "vocab_size": self.vocab_size,
        }


class TokenUnits:
    """Token ids of one tokenizer (``None`` when only stored ids of one tokenizer are compared)."""

    kind = "tokens"

    def __init__(
        self, tokenizer=None, source: str | None = None, tokenizer_hash: str | None = None
    ):
        self.tokenizer = tokenizer
        self.source = source
        self.tokenizer_hash = tokenizer_hash
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self.id_limit = self.vocab_size if self.vocab_size else MAX_ID_LIMIT

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.tokenizer is None:
            raise InputError(
                "text corpora need a tokenizer for token n-grams",
                remedy=f"pass {arg('tokenizer')} (a model directory or hub name) or "
                f"{arg('units', 'words')}",
            )
        enc = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        values, lengths = flat_list(pa.array(enc, type=pa.list_(pa.uint32())))
        ids = values.to_numpy(zero_copy_only=False)
        return ids.astype(np.uint32, copy=False), lengths

    def check(self, ids: np.ndarray, where: str) -> None:
        if len(ids) and int(ids.max()) >= self.id_limit:
            raise InputError(
                f"{where}: token id {int(ids.max())} is outside the tokenizer's vocabulary ({self.vocab_size})",
                remedy="the scores were made with another tokenizer: pass the matching "
                f"{arg('tokenizer')}",
            )

    def unit_texts(self, ids: np.ndarray) -> list[str]:
        if self.tokenizer is None:
            return [f"<{int(i)}>" for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def decode_ngram(self, ids: np.ndarray) -> str:
        if self.tokenizer is None:
            return " ".join(f"<{int(i)}>" for i in ids)
        return self.tokenizer.decode([int(i) for i in ids])

    def decode_docs(self, lists: pa.Array) -> list[str]:
        """Texts of scored documents (for word units over a scores directory)."""
        if self.tokenizer is None:
            raise InputError(
                "word n-grams of a scores directory need its tokenizer to decode the tokens",
                remedy=f"pass {arg('tokenizer')}, or make the model in the scores manifest reachable",
            )
        return self.tokenizer.batch_decode(lists.to_pylist())

    def describe(self) -> dict:
        return {
            "kind": "tokens",
            "tokenizer": self.source,
            "tokenizer_hash": self.tokenizer_hash,
            "vocab_size": self.vocab_size,
        }
