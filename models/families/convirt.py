"""ConVIRT image and text towers (Zhang et al. 2020, "Contrastive Learning of Medical Visual
Representations from Paired Images and Text"), families ``convirt-image`` and ``convirt-text``.

Each tower is a pretrained encoder followed by ConVIRT's non-linear projection head
(Linear -> ReLU -> Linear) into a shared space where an image and its report are near:

* image: EfficientNet-Lite0 (``models.families.efficientnet``, ImageNet weights from the zoo) -> 1280-d pooled
  features -> head. Besides the usual image formats it accepts DICOM bytes (``models.data.medical``:
  modality LUT, VOI window, 8-bit grayscale repeated over 3 channels).
* text: BERT (``models.families.bert``, initialised from ``minilm-l6@1``) -> mean-pooled 384-d -> head.

Each tower is one artifact (one ONNX graph from pixels / token ids to the projection), so the service
runs it like any other encoder; ``spec.config["towers"]`` names the two. ``ConvirtTextTower`` also runs
in two halves (``frozen_prefix`` then ``trainable_suffix``), so training can cache the output of the
frozen lower layers; their composition is exactly ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.core.encoder import Batch
from models.core.errors import ArtifactError
from models.core.registry import register_family
from models.core.spec import EncoderSpec
from models.families.bert import BertConfig, BertModel, BertTextFamily
from models.families.efficientnet import EfficientNetLite, EfficientNetLiteConfig, EfficientNetLiteFamily


@dataclass(frozen=True)
class ProjectionConfig:
    in_dim: int
    hidden: int = 512
    dim: int = 128

    @classmethod
    def from_spec(cls, spec: EncoderSpec, in_dim: int) -> ProjectionConfig:
        """From ``spec.config["projection_hidden"]``; the output size is ``spec.dim``."""
        if "projection_hidden" not in spec.config:
            raise ArtifactError(f"{spec.key}: spec config lacks projection_hidden")
        return cls(in_dim=in_dim, hidden=int(spec.config["projection_hidden"]), dim=spec.dim)


class ProjectionHead(nn.Module):
    """ConVIRT's g_v / g_u: a non-linear projection (the paper's Linear -> ReLU -> Linear)."""

    def __init__(self, cfg: ProjectionConfig) -> None:
        super().__init__()
        self.hidden = nn.Linear(cfg.in_dim, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x)))  # (B, in) -> (B, hidden) -> (B, dim)


class ConvirtImageTower(nn.Module):
    def __init__(self, backbone_cfg: EfficientNetLiteConfig, head_cfg: ProjectionConfig) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(backbone_cfg)
        self.head = ProjectionHead(head_cfg)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixels)  # (B, 3, S, S) -> (B, 1280)
        return self.head(features)  # type: ignore[no-any-return]  # (B, dim)


class ConvirtTextTower(nn.Module):
    def __init__(self, backbone_cfg: BertConfig, head_cfg: ProjectionConfig) -> None:
        super().__init__()
        self.backbone = BertModel(backbone_cfg)
        self.head = ProjectionHead(head_cfg)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        pooled = self.backbone(input_ids, attention_mask, token_type_ids)  # (B, S) ids -> (B, H)
        return self.head(pooled)  # type: ignore[no-any-return]  # (B, dim)

    @staticmethod
    def _mask_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        keep = attention_mask.to(dtype)  # (B, S)
        return (1.0 - keep)[:, None, None, :] * torch.finfo(dtype).min  # (B, 1, 1, S), as BertModel

    def frozen_prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, layers: int
    ) -> torch.Tensor:
        """Hidden states ``(B, S, H)`` after the embeddings and the first ``layers`` layers."""
        x = self.backbone.embeddings(input_ids, token_type_ids)  # (B, S, H)
        bias = self._mask_bias(attention_mask, x.dtype)
        for layer in self.backbone.encoder.layer[:layers]:
            x = layer(x, bias)
        return x  # type: ignore[no-any-return]

    def trainable_suffix(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """The remaining layers, mean pooling and the head: ``(B, S, H)`` -> ``(B, dim)``."""
        bias = self._mask_bias(attention_mask, hidden.dtype)
        x = hidden
        for layer in self.backbone.encoder.layer[layers:]:
            x = layer(x, bias)  # (B, S, H)
        keep = attention_mask.to(x.dtype)[:, :, None]  # (B, S, 1)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)  # (B, H)
        return self.head(pooled)  # type: ignore[no-any-return]


@register_family("convirt-image")
class ConvirtImageFamily(EfficientNetLiteFamily):
    """EfficientNet-Lite preprocessing (centre crop, resize, 127/128 scaling), DICOM accepted too."""

    output_name = "embedding"

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        from models.data.medical import decode_study_image, is_dicom

        max_pixels = int(self._setting("max_pixels"))
        images = [
            decode_study_image(bytes(x), max_pixels) if isinstance(x, bytes | bytearray) and is_dicom(bytes(x)) else x
            for x in inputs
        ]
        return super().preprocess(images)

    def build_module(self) -> ConvirtImageTower:  # type: ignore[override]
        backbone = EfficientNetLiteConfig.from_dict(self.spec.config)
        head = ProjectionConfig.from_spec(self.spec, backbone.head_channels)
        return ConvirtImageTower(backbone, head).eval()


@register_family("convirt-text")
class ConvirtTextFamily(BertTextFamily):
    """BERT word-piece tokenizer (``tokenizer.json`` in the artifact), truncation at ``max_tokens``."""

    output_name = "embedding"

    def build_module(self) -> ConvirtTextTower:  # type: ignore[override]
        backbone = BertConfig.from_dict(self.spec.config)
        if self.max_tokens > backbone.max_positions:
            raise ArtifactError(f"{self.spec.key}: max_tokens {self.max_tokens} > {backbone.max_positions} positions")
        head = ProjectionConfig.from_spec(self.spec, backbone.hidden_size)
        return ConvirtTextTower(backbone, head).eval()
