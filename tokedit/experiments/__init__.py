"""Model-collapse experiments: ``recursive`` and ``mixture``.

``recursive`` follows ForTIFAI's pipeline: generation 0 fine-tunes a pretrained base (a small
model pretrained here once, the real Gemma 3 270M prior, or any model), each later generation
fine-tunes the previous generation's checkpoint on the data that checkpoint wrote (beam search
with ForTIFAI's settings, or sampling) plus fresh real text; CE, TCE and ToEdit arms; ForTIFAI's
metrics (KL(synthetic || real) in nats with its floor, a knowledge test on training statements)
next to tokedit's, and the generation at which each failure line is crossed. ``mixture`` is a
small-scale analogue of ToEdit's Table 1: human data mixed with an independently sampled
synthetic corpus, perplexity on held-out documents and on a second corpus (other plays).
docs/fidelity.md lists, file by function, what the papers' code does and where this differs.

Both experiments reuse the library: the trainer (``train_model``), generation
(``generate_beam_corpus``, ``generate_continuations``), the scorer (``score_dataset``), the
editor (``edit_dataset``) and the analysis accumulators (n-gram tables, the 10-bin probability
histogram). Nothing here re-implements scoring, editing or IO; it only wires them together.

Modules: :mod:`presets` (sizes), :mod:`data` (documents, corpus splits), :mod:`models` (base,
training, generation, scoring and editing adapters), :mod:`metrics`, :mod:`recursive`,
:mod:`mixture`, :mod:`report` (plots and HTML), :mod:`gaussian` (the closed-form 1-D refit
loop). docs/training.md describes the arms, the metrics and the presets.
"""
