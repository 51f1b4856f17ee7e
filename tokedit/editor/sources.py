"""Where an edit's tokens and candidates come from, batch by batch: a scores directory, or a
model scoring in the same pass (full rows with hf, top-k candidates with vLLM). Each source
returns the batch's scores and its draws; the shard step applies them."""

from __future__ import annotations

from pathlib import Path

from tokedit.editor.batch import ScoreBatch, draw_batch
from tokedit.editor.rng import doc_keys
from tokedit.errors import InputError
from tokedit.io.read import Documents, RowBatch
from tokedit.io.scores_dir import (
    TEXT_FINGERPRINT,
    AlignedScores,
    check_alignment,
    check_fingerprints,
    scores_rel,
)
from tokedit.io.shards import Shard


def stored_draws(source, table, docs: Documents, where, row0: int, on_tokens=None):
    """The scores of ``table`` (rows ``row0 ..`` of ``where``), checked against ``docs``,
    and the draws of ``source``'s rule from their candidates."""
    sb = ScoreBatch.from_table(table)
    check_alignment(sb, docs, where, row0)
    if TEXT_FINGERPRINT in table.column_names:
        check_fingerprints(table.column(TEXT_FINGERPRINT), docs, where, row0)
    keys = doc_keys(source.seed, sb.ids)
    draws = draw_batch(sb, keys, source.p_min, source.rule, source.banned)
    if on_tokens is not None:
        on_tokens(len(sb.token_ids))
    return sb, draws


class ScoresSource:
    """Documents with their stored scores and the draws from the stored candidates."""

    def __init__(self, scores_dir: Path, rows: dict, rule, banned, seed, p_min):
        self.dir = scores_dir
        self.rows = rows  # the scores manifest's row count of each shard
        self.rule, self.banned, self.seed, self.p_min = rule, banned, seed, p_min
        self.current: AlignedScores | None = None

    def open(self, shard: Shard) -> None:
        self.current = AlignedScores(self.dir / scores_rel(shard), self.rows.get(shard.rel))

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        row0 = self.current.taken
        table = self.current.take(len(batch), batch)
        return stored_draws(self, table, docs, self.current.path, row0, on_tokens)

    def close(self, shard: Shard) -> None:
        self.current.finish(shard)


class TableSource:
    """Documents with scores held in memory (a table of the scores schema, one row per
    document from row 0 on), drawn from exactly as from a scores directory."""

    def __init__(self, table, rule, banned, seed, p_min, name: str = "scores"):
        self.table, self.name = table, name
        self.rule, self.banned, self.seed, self.p_min = rule, banned, seed, p_min

    def open(self, shard: Shard) -> None:
        pass

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        if batch.start + len(batch) > self.table.num_rows:
            raise InputError(
                f"{batch.where(len(batch) - 1)} has no row in the {self.table.num_rows} rows of "
                f"{self.name}",
                remedy="pass the scores of these same texts, in the same order",
            )
        table = self.table.slice(batch.start, len(batch))
        return stored_draws(self, table, docs, self.name, batch.start, on_tokens)

    def close(self, shard: Shard) -> None:
        pass


class CandidatesSource:
    """One pass with a backend that returns only the top-k candidates (vLLM).

    The documents are scored in memory, with candidates wherever P >= the lowest threshold,
    and drawn from exactly as from a scores directory: the same output as ``tokedit score``
    followed by ``tokedit edit --scores`` with the same options.
    """

    def __init__(self, scorer, rule, banned, seed, p_min):
        self.scorer = scorer
        self.rule, self.banned, self.seed, self.p_min = rule, banned, seed, p_min

    def open(self, shard: Shard) -> None:
        pass

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        table, _ = self.scorer.score(docs, on_tokens=on_tokens)
        sb = ScoreBatch.from_table(table)
        keys = doc_keys(self.seed, sb.ids)
        return sb, draw_batch(sb, keys, self.p_min, self.rule, self.banned)

    def close(self, shard: Shard) -> None:
        pass


class ModelSource:
    """Documents scored by a model in the same pass, with draws from the full rows."""

    def __init__(self, scorer, drawing):
        self.scorer, self.drawing = scorer, drawing

    def open(self, shard: Shard) -> None:
        pass

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        ok = self.drawing.begin(docs)
        if ok:
            table, _ = self.scorer.score(docs, on_tokens=on_tokens)
        else:  # nothing to tokenize (the tokenizer refuses an empty list)
            from tokedit.scoring.scorer import build_scores_table

            table = build_scores_table(docs, [], [], [], 0)
        sb = ScoreBatch.from_table(table)
        return sb, self.drawing.draws(sb, ok)

    def close(self, shard: Shard) -> None:
        pass
