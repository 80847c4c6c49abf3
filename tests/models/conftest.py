"""Fixtures shared by the model tests live in tests/conftest.py (``zoo_dirs``): the service
tests pull the same zoo models, once per session."""
