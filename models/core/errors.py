"""Domain errors of the encoders; the service maps each to an HTTP status once."""

from __future__ import annotations


class ModelError(Exception):
    code = "model_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
