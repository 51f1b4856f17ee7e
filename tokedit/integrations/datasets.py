"""Hugging Face ``datasets``: :func:`edit_function` for ``Dataset.map(fn, batched=True)``.

::

    from tokedit.integrations.datasets import edit_function

    fn = edit_function(PRIOR, p=0.99, seed=0, max_length=512)
    edited = dataset.map(fn, batched=True, batch_size=64, num_proc=2)

Works the same for ``Dataset`` and ``IterableDataset``. With ``edits=True`` the
``tokedit_edits`` column (each edit's position and token ids) is added too; a ``Dataset``
then needs ``map(..., features=fn.features(dataset.features))``: ``datasets`` fixes each
column's type from the first batch it writes, and a first batch without any edit would
make it a list of nulls, which the next batch with edits cannot be cast to. The function object pickles as its
configuration only; each process loads the prior the first time it edits a batch and keeps
it. Ids come from ``id_column`` (``with_indices=True`` and ``id_column=None``: the row
index), so the edited bytes do not depend on ``batch_size`` or ``num_proc``.
"""

from __future__ import annotations

import pyarrow as pa

from tokedit.api import edit
from tokedit.errors import InputError
from tokedit.integrations._common import PriorConfig, check_edit_kwargs
from tokedit.io import DEFAULT_BATCH_ROWS
from tokedit.io.edited_dir import PROVENANCE_COLUMNS, TOKEDIT_EDITS
from tokedit.scoring.options import ModelOptions


class EditFunction:
    """A batched map function: the batch with ``text_column`` edited (or the edit written
    to ``output_column``) and the ``tokedit_*`` provenance columns added, as lists."""

    def __init__(
        self,
        prior: PriorConfig,
        *,
        text_column: str = "text",
        id_column: str | None = "id",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        edits: bool = False,
        **edit_kwargs,
    ):
        self.prior = prior
        self.edits = edits
        self.text_column = text_column
        self.id_column = id_column
        self.batch_rows = batch_rows
        self.edit_kwargs = check_edit_kwargs(edit_kwargs, "edit_function")

    def __call__(self, batch: dict, indices: list[int] | None = None) -> dict:
        texts = batch[self.text_column]
        if self.id_column is not None:
            if self.id_column not in batch:
                raise InputError(
                    f"the batch has no id column {self.id_column!r} (columns: {', '.join(batch)})",
                    remedy="pass id_column=<the dataset's id column>, or id_column=None with "
                    "map(..., with_indices=True) to key the draws by row index",
                )
            ids = batch[self.id_column]
        elif indices is not None:
            ids = indices
        else:
            raise InputError(
                "edit_function(id_column=None) needs the row indices",
                remedy="call map(fn, batched=True, with_indices=True), or name an id column",
            )
        edits = edit(
            list(texts),
            prior=self.prior.load(),
            ids=list(ids),
            batch_rows=self.batch_rows,
            **self.edit_kwargs,
        )
        table = edits.to_arrow()
        out = dict(batch)
        target = edits.options.output_column or self.text_column
        out[target] = edits.texts
        for name in self._provenance(table.column_names):
            out[name] = table.column(name).to_pylist()
        return out

    def _provenance(self, names) -> list[str]:
        return [n for n in PROVENANCE_COLUMNS if n in names and (self.edits or n != TOKEDIT_EDITS)]

    def features(self, features=None):
        """``features`` (those of the dataset mapped) with the columns this function adds:
        pass it as ``map(..., features=fn.features(dataset.features))``."""
        from datasets import Features

        from tokedit.editor.batch import EDITS_TYPE

        types = {n: pa.int64() for n in PROVENANCE_COLUMNS} | {TOKEDIT_EDITS: EDITS_TYPE}
        provenance = self.edit_kwargs.get("provenance", True)
        added = pa.schema([(n, types[n]) for n in self._provenance(types) if provenance])
        target = self.edit_kwargs.get("output_column")
        if target:
            added = added.insert(0, pa.field(target, pa.string()))
        return Features({**(features or {}), **Features.from_arrow_schema(added)})


def edit_function(
    model: str,
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    device: str = ModelOptions.device,
    dtype: str = ModelOptions.dtype,
    backend: str = ModelOptions.backend,
    revision: str | None = ModelOptions.revision,
    trust_remote_code: bool = ModelOptions.trust_remote_code,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    edits: bool = False,
    **edit_kwargs,
) -> EditFunction:
    """A picklable function for ``Dataset.map(fn, batched=True)`` that edits
    ``text_column`` with the prior ``model`` (loaded once per process, on first use).

    ``edit_kwargs``: those of :func:`tokedit.edit` (``preset``, ``p``, ``top_k``,
    ``temperature``, ``drop_below``, ``seed``, ``output_column``, ``provenance``,
    ``max_length``, ``overlap``, ``batch_tokens``, ``bos`` ...), checked here.
    ``edits``: add the ``tokedit_edits`` column too (see the module's note on features).
    ``trust_remote_code``: as :func:`tokedit.load_prior`'s.
    """
    config = PriorConfig(
        model,
        device=device,
        dtype=dtype,
        backend=backend,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    return EditFunction(
        config,
        text_column=text_column,
        id_column=id_column,
        batch_rows=batch_rows,
        edits=edits,
        **edit_kwargs,
    )
