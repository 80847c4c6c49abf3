"""Pieces of the search benchmark (``bench/search.py``): data and machine readings, the server
under test, the closed-loop load generator, the report tables, and the tables a run prints."""
