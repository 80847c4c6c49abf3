"""Backward-compatible upgrades: train a new encoder whose vectors can be searched against an old one's.

* ``report``: the BCT evaluation protocol (cross-test, criterion, negative flips) and ``compat_chain``.
* ``matrix``: compatibility matrix of a chain of models, AC and AM.
* ``heads`` / ``objective``: BCT, BT² and OCA as a head around any backbone plus a loss object
  (``wrap_for_compat``), so every training recipe can offer ``--compatible-with/--method``.
"""
