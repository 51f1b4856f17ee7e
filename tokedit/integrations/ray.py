"""Ray Data: :class:`RayEditor`, a callable class for ``Dataset.map_batches``.

::

    import ray
    from tokedit.integrations.ray import RayEditor

    edited = ray.data.read_json(DATA).map_batches(
        RayEditor,
        fn_constructor_args=(PRIOR,),
        fn_constructor_kwargs={"p": 0.99, "seed": 0},
        batch_format="pyarrow",
        concurrency=2,
    )

Each actor loads the prior once, in ``__init__``. Batches come as a ``pyarrow.Table``, a
``pandas.DataFrame`` or a dict of numpy arrays and go back in the same format, with the
text edited (or written to ``output_column``) and the ``tokedit_*`` provenance columns.
Ids come from ``id_column``, so the bytes do not depend on how Ray cuts the batches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tokedit.api import edit
from tokedit.errors import InputError
from tokedit.integrations._common import PriorConfig, check_edit_kwargs
from tokedit.io import DEFAULT_BATCH_ROWS
from tokedit.io.edited_dir import PROVENANCE_COLUMNS
from tokedit.scoring.options import ModelOptions


class RayEditor:
    """Edits ``text_column`` of every batch with the prior ``model``, keyed by
    ``id_column``. ``edit_kwargs``: those of :func:`tokedit.edit` (``preset``, ``p``,
    ``top_k``, ``temperature``, ``drop_below``, ``seed``, ``output_column``,
    ``provenance``, ``max_length``, ``overlap``, ``batch_tokens``, ``bos`` ...)."""

    def __init__(
        self,
        model: str,
        *,
        text_column: str = "text",
        id_column: str = "id",
        device: str = ModelOptions.device,
        dtype: str = ModelOptions.dtype,
        backend: str = ModelOptions.backend,
        revision: str | None = ModelOptions.revision,
        trust_remote_code: bool = ModelOptions.trust_remote_code,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        **edit_kwargs,
    ):
        self.text_column, self.id_column, self.batch_rows = text_column, id_column, batch_rows
        self.edit_kwargs = check_edit_kwargs(edit_kwargs, "RayEditor")
        config = PriorConfig(
            str(model),
            device=device,
            dtype=dtype,
            backend=backend,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        self.prior = config.load()

    def _edited(self, texts: list, ids: list) -> dict[str, pa.ChunkedArray]:
        edits = edit(
            texts, prior=self.prior, ids=ids, batch_rows=self.batch_rows, **self.edit_kwargs
        )
        table = edits.to_arrow()
        target = edits.options.output_column or self.text_column
        source = edits.options.output_column or "text"
        columns = {target: table.column(source)}
        columns.update({n: table.column(n) for n in PROVENANCE_COLUMNS if n in table.column_names})
        return columns

    def _check(self, names) -> None:
        for name in (self.text_column, self.id_column):
            if name not in names:
                raise InputError(
                    f"the batch has no column {name!r} (columns: {', '.join(map(str, names))})",
                    remedy="pass RayEditor(..., text_column=..., id_column=...) of this dataset",
                )

    def __call__(self, batch):
        if isinstance(batch, pa.Table):
            self._check(batch.column_names)
            columns = self._edited(
                batch.column(self.text_column).to_pylist(), batch.column(self.id_column).to_pylist()
            )
            for name, column in columns.items():
                if name in batch.column_names:
                    batch = batch.set_column(batch.column_names.index(name), name, column)
                else:
                    batch = batch.append_column(name, column)
            return batch
        if isinstance(batch, dict):
            self._check(list(batch))
            columns = self._edited(
                list(np.asarray(batch[self.text_column]).tolist()),
                list(np.asarray(batch[self.id_column]).tolist()),
            )
            out = dict(batch)
            for name, column in columns.items():
                if pa.types.is_integer(column.type):
                    out[name] = column.to_numpy()
                else:  # strings (None kept) and the edits' lists of dicts
                    values = np.empty(len(column), dtype=object)
                    values[:] = column.to_pylist()
                    out[name] = values
            return out
        try:  # a pandas.DataFrame
            names = list(batch.columns)
        except AttributeError:
            raise TypeError(
                f"RayEditor got a batch of type {type(batch).__name__}; use "
                "batch_format='pyarrow', 'pandas' or 'numpy'"
            ) from None
        self._check(names)
        columns = self._edited(batch[self.text_column].tolist(), batch[self.id_column].tolist())
        out = batch.copy()
        for name, column in columns.items():
            out[name] = column.to_pylist()
        return out
