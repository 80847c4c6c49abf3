"""Batch indexing jobs: read a source (server directory, JSONL/CSV manifest, upload), encode its
items in batches and upsert them into one collection, durably and resumably.

``model`` (options, items, the public view), ``paths`` (allowed roots), ``sources`` (walking and
parsing), ``encode`` (one batch -> vectors + per-item failures), ``runner`` (the interface and the
shared submit/cancel/progress code), ``embedded`` (in-process thread pipeline) and the Redis
Streams runner: ``streams`` (wire format), ``redis_runner`` (server side) and ``worker``
(``ers worker`` processes).
"""
