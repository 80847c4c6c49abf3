"""Training recipes: ``ers train FAMILY`` / ``ers eval ARTIFACT``.

``recipe.py`` holds the registry and the request/result types every family recipe uses;
``checkpoint.py`` saves and resumes training state without pickle; ``run.py`` holds the shared
pieces of a training run (seeds, device, progress bar, config files, metrics + model card).
Family recipes live one file per family (``models/training/<family>.py``); losses live in
``models/losses.py``.
"""
