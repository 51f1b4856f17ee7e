"""Engines that run a per-shard step over many shards: ``local`` (:mod:`tokedit.engines.runner`)
and ``ray`` (:mod:`tokedit.engines.ray_engine`)."""
