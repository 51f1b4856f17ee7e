"""Engines that run a per-shard step over many shards: ``local`` (:mod:`tokedit.io.runner`)
and ``ray`` (:mod:`tokedit.engines.ray_engine`)."""
