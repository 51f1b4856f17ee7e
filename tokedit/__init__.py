"""tokedit: token-level editing of training corpora against model collapse."""

__version__ = "0.1.0"
