"""Dataset shards, scores and edited directories, manifests and object stores: every file
format tokedit reads or writes has its one owner module here."""

DEFAULT_BATCH_ROWS = 512  # rows read (and scored, edited) at a time: bounds the memory
