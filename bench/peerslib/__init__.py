"""Pieces of the peers benchmark (``bench/peers.py``): data sets, ERS, Chroma, in-process HNSW, the report."""
