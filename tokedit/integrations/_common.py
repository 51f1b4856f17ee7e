"""What the integrations share: the edit keywords checked once where the pipeline is built,
and one loaded prior per process and configuration."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from tokedit.api import Prior, edit_options, load_prior
from tokedit.scoring.options import ModelOptions

# one prior per (model, device, dtype, backend, revision, trust) and process: a map worker, a
# datatrove task or a forked process loads it on first use and keeps it for every batch
_PRIORS: dict[PriorConfig, Prior] = {}
_FORKED_AFTER_TORCH = [False]


def _after_fork_in_child() -> None:
    # A process forked from one that had run torch ops on several threads hangs in its first
    # parallel op (GNU OpenMP's thread pool does not survive fork): datasets' map(num_proc=N)
    # forks the caller, who may well have edited or trained in the same session.
    if "torch" in sys.modules:
        _FORKED_AFTER_TORCH[0] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class PriorConfig:
    """What :func:`tokedit.load_prior` needs: small and picklable, unlike the prior."""

    model: str
    device: str = ModelOptions.device
    dtype: str = ModelOptions.dtype
    backend: str = ModelOptions.backend
    revision: str | None = ModelOptions.revision
    trust_remote_code: bool = ModelOptions.trust_remote_code

    def load(self) -> Prior:
        if _FORKED_AFTER_TORCH[0]:
            import torch

            torch.set_num_threads(1)  # the one setting that does not hang after such a fork
            _FORKED_AFTER_TORCH[0] = False
        prior = _PRIORS.get(self)
        if prior is None:
            prior = _PRIORS[self] = load_prior(
                self.model,
                device=self.device,
                dtype=self.dtype,
                backend=self.backend,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
            )
        return prior


def check_edit_kwargs(kwargs: dict, where: str) -> dict:
    """``kwargs`` if :func:`tokedit.edit` takes them with a prior (one threshold), else the
    error it would raise, here where the pipeline is built rather than in a worker."""
    try:
        edit_options(None, None, dict(kwargs))
    except TypeError as e:
        raise TypeError(str(e).replace("edit()", f"{where}()", 1)) from None
    return dict(kwargs)
