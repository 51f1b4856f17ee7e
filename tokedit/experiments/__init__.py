"""Model-collapse experiments at small scale: ``recursive`` and ``mixture``.

They are small-scale *analogues* of the papers' experiments, not reproductions: ``recursive``
follows the structure of ForTIFAI's recursive training and ``mixture`` that of ToEdit's
Table 1, with a tiny Llama-style model trained from scratch on a few hundred documents.
ForTIFAI continues fine-tuning a pretrained 1B-class model from stage to stage on
beam-searched continuations; ToEdit's Table 1 mixes an independent synthetic corpus and
measures perplexity on other corpora. docs/fidelity.md lists the differences.

Both experiments reuse the library: the trainer (``train_model``), prefix-conditioned
generation (``generate_continuations``), the scorer (``score_dataset``), the editor
(``edit_dataset``) and the analysis accumulators (n-gram tables, the 10-bin probability
histogram). Nothing here re-implements scoring, editing or IO; it only wires them together.

Common setup (both experiments):

* Real documents are read from a dataset directory, cut into pieces of at most
  ``doc_chars`` characters (at paragraph breaks, ``io.texts.split_documents``), shuffled with the
  seed and, once a byte-level BPE tokenizer has been trained on the first training slice,
  truncated to their first ``doc_tokens`` tokens (a byte-exact prefix). A held-out set of real
  documents is never trained on.
* One tokenizer and one initial model (``build_model``, fixed seed) are made once and saved to
  ``OUT/init``; every training run of every arm and generation starts from these same
  weights, so the runs differ only in their data and loss.
* Every training run has the same number of optimizer steps (``steps``), batch and block
  size: the same compute whatever the amount of data.
* Held-out perplexity is plain cross entropy (whatever the training loss) on the held-out
  real documents packed into blocks.

Modules: :mod:`presets` (sizes), :mod:`data` (documents), :mod:`models` (init, training,
generation, scoring and editing adapters), :mod:`metrics`, :mod:`recursive`, :mod:`mixture`,
:mod:`report` (plots and HTML), :mod:`gaussian` (the closed-form 1-D refit loop).
docs/training.md describes the arms, the metrics and the presets.
"""
