"""The one base of every domain error, and the models layer's root.

Each layer has exactly one root under ``ERSError``: ``ModelError`` here, ``IndexerError`` in
``indexer.errors`` and ``ServiceError`` in ``service.runtime.errors``; every concrete error derives
from its layer's root. ``service/errors.py`` maps each class to an HTTP status, in one table, and
``tests/service/test_error_mapping.py`` fails when a class has no entry there.
"""

from __future__ import annotations


class ERSError(Exception):
    """Base of every error a client may see; ``code`` is the stable machine-readable name."""

    code = "error"
    # Seconds after which the same request may succeed, when the error knows (an overloaded queue);
    # the service sends it as ``Retry-After``.
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelError(ERSError):
    """Root of the errors of the models layer (encoders, artifacts, the zoo, training)."""

    code = "model_error"


class EncoderNotFound(ModelError):
    """The encoder is not in the data directory (it must be pulled or imported first)."""

    code = "encoder_not_found"


class InvalidEncoderInput(ModelError):
    """An input the encoder cannot take: corrupt image, unsupported format, text over the limit (422)."""

    code = "invalid_encoder_input"


class InputTooLarge(ModelError):
    """An input over a size limit, e.g. an image with too many pixels (413)."""

    code = "input_too_large"


class ArtifactError(ModelError):
    """An artifact directory is incomplete or fails its sha256 manifest."""

    code = "artifact_error"


class ZooError(ModelError):
    """A model could not be fetched or converted (missing npm, package not on the registry...)."""

    code = "zoo_error"
