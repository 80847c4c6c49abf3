"""Backward-compatible upgrades of a collection's encoder (the upgrade domain):

- ``compat``: which encoder versions' vectors a query may meet, and on how many dims (``SpecCompat``);
- ``eval_set``: a collection's labelled evaluation set, the data the gate measures on;
- ``gate``: the spec check and the compatibility reports a migration must pass;
- ``migrations``: ``Migrations`` — migrate, rollback and the durable history;
- ``backfill``: the background backfill job a migration may start (the job source itself is
  ``indexer.jobs.backfill``);
- ``errors``: ``MigrationRefused``.

The service builds one ``SpecCompat`` and one ``Migrations`` at start-up (``service/app.py``); the
routes in ``service/routes/migrations.py`` only translate HTTP to these calls.
"""
