"""Encoders (FaceNet, image-text, ConVIRT, Unified Embedding); imports neither indexer nor service."""
