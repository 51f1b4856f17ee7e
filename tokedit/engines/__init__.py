"""Running a per-shard step (:class:`tokedit.engines.step.ShardStep`) over many shards with
resume: ``local`` (:mod:`tokedit.engines.runner`) and ``ray`` (:mod:`tokedit.engines.ray_engine`)."""
