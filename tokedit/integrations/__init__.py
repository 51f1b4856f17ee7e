"""tokedit inside other data pipelines: Hugging Face ``datasets`` (:mod:`.datasets`),
datatrove (:mod:`.datatrove`) and Ray Data (:mod:`.ray`).

Each module imports its library only when it is imported itself, so ``import tokedit``
never pulls any of them in. All three edit through :func:`tokedit.edit` with the
documents' own ids, so their bytes equal those of ``tokedit edit --model`` on the same
texts, ids, seed, p and window options, however the pipeline batches the documents.
"""
