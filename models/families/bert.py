"""BERT text encoder in plain PyTorch (nanoGPT style), with mean pooling inside the network.

Parameter names follow the Hugging Face ``BertModel`` checkpoint (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``...), so a MiniLM/BERT ``model.safetensors`` loads with
``strict=True`` once its unused ``pooler.*`` weights and ``embeddings.position_ids`` buffer are dropped
(see ``HF_UNUSED``). The module returns the mean-pooled ``(B, hidden)`` vector, so the exported ONNX
graph does the pooling too; ``BertTextFamily.postprocess`` (the base class) L2-normalises it.

Text longer than ``spec.config["max_tokens"]`` word pieces (including [CLS] and [SEP]) is truncated:
the tail is ignored, as in sentence-transformers. To bound the tokenizing cost, each text is first cut
to ``CHARS_PER_TOKEN * max_tokens`` characters (25,600 for 256 tokens), which only matters for
pathological text averaging over 100 characters per piece (see ``CHARS_PER_TOKEN``).
Non-strings, empty or blank strings and invalid Unicode are rejected with ``InvalidEncoderInput``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.encoder import Batch, Family
from models.core.errors import ArtifactError, InvalidEncoderInput
from models.core.registry import register_family
from models.core.spec import EncoderSpec

TOKENIZER_FILE = "tokenizer.json"
# Checkpoint entries our module does not have: the unused [CLS] pooler and a constant buffer.
HF_UNUSED = ("pooler.", "embeddings.position_ids")
# Characters kept per allowed piece before tokenizing. Real text averages ~4-6 characters a piece;
# only text averaging over 100 (long whitespace runs, many words over 100 characters, each of which
# WordPiece turns into one [UNK]) loses pieces it would have kept.
CHARS_PER_TOKEN = 100


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BertConfig:
        """From ``spec.config`` (extra keys such as ``max_tokens`` are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` of a ``BertModel``."""
        if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT with exact GELU and absolute positions is supported")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_positions=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        )


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (S,)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, S, H)
        x = x + self.position_embeddings(positions)[None]  # (B, S, H)
        return self.LayerNorm(x)  # type: ignore[no-any-return]


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        assert cfg.hidden_size % cfg.num_heads == 0
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.sqrt_head_dim = math.sqrt(self.head_dim)  # a Python constant, not traced
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        B, S, H = x.shape
        nh, d = self.num_heads, self.head_dim
        q, k, v = (p(x).view(B, S, nh, d).transpose(1, 2) for p in (self.query, self.key, self.value))  # (B, nh, S, d)
        att = (q @ k.transpose(-2, -1)) / self.sqrt_head_dim + mask_bias  # (B, nh, S, S)
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, S, d)
        return y.transpose(1, 2).reshape(B, S, H)  # (B, S, H)


class DenseResidualNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's post-LN output of attention and of the FFN."""

    def __init__(self, d_in: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)  # type: ignore[no-any-return]


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseResidualNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)  # type: ignore[no-any-return]


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT; (B, S, I)


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)  # (B, S, H)
        return self.output(self.intermediate(x), x)  # type: ignore[no-any-return]


class LayerStack(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))


class BertModel(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids)`` (all ``(B, S)`` int64) -> ``(B, H)``
    mean of the last hidden states over the tokens where ``attention_mask`` is 1."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = LayerStack(cfg)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, H)
        keep = attention_mask.to(x.dtype)  # (B, S)
        # Padded keys get the most negative float, so softmax gives them exactly zero weight.
        mask_bias = (1.0 - keep)[:, None, None, :] * torch.finfo(x.dtype).min  # (B, 1, 1, S)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)  # (B, S, H)
        summed = (x * keep[:, :, None]).sum(dim=1)  # (B, H)
        count = keep.sum(dim=1, keepdim=True).clamp(min=1e-9)  # (B, 1)
        return summed / count  # (B, H)


def hf_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``BertModel`` state dict for our module: prefix ``bert.`` stripped, unused dropped."""
    stripped = {key.removeprefix("bert."): value for key, value in state.items()}
    return {key: value for key, value in stripped.items() if not key.startswith(HF_UNUSED)}


@register_family("bert")
class BertTextFamily(Family):
    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, spec: EncoderSpec, directory: Path | None = None) -> None:
        super().__init__(spec, directory)
        self._tokenizer: Any = None

    @property
    def max_tokens(self) -> int:
        return int(self.spec.config.get("max_tokens", 256))

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            if self.directory is None or not (self.directory / TOKENIZER_FILE).is_file():
                raise ArtifactError(f"{self.spec.key}: {TOKENIZER_FILE} is missing from the artifact")
            tok = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
            # The file's own settings (fixed padding to 128) are replaced: truncate at our limit and
            # pad only to the longest text of the batch.
            tok.enable_truncation(max_length=self.max_tokens)
            pad_id = tok.token_to_id("[PAD]")
            tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
            self._tokenizer = tok
        return self._tokenizer

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        if isinstance(inputs, str):
            raise InvalidEncoderInput("text inputs must be a list of strings, not one string")
        texts = list(inputs)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidEncoderInput(f"input {i} is {type(text).__name__}, not a string")
            if not text.strip():
                raise InvalidEncoderInput(f"input {i} is an empty or blank string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidEncoderInput(f"input {i} is not valid Unicode text: {exc.reason}") from exc
        # Cut before tokenizing, so a huge text costs no more than its first tokens (see module doc).
        limit = CHARS_PER_TOKEN * self.max_tokens
        texts = [text[:limit] for text in texts]
        encodings = self.tokenizer().encode_batch(texts) if texts else []

        def array(attr: str) -> np.ndarray:
            rows = [getattr(e, attr) for e in encodings]
            return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1 if rows else 0)

        fields_of = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {name: array(attr) for name, attr in fields_of.items()}

    def build_module(self) -> BertModel:
        cfg = BertConfig.from_dict(self.spec.config)
        if cfg.hidden_size != self.spec.dim:
            raise ArtifactError(f"{self.spec.key}: hidden size {cfg.hidden_size} != spec dim {self.spec.dim}")
        if self.max_tokens > cfg.max_positions:
            raise ArtifactError(f"{self.spec.key}: max_tokens {self.max_tokens} > {cfg.max_positions} positions")
        return BertModel(cfg).eval()

    def example_inputs(self) -> Sequence[Any]:
        return ["A short example.", "A slightly longer example sentence, so that the batch has padding."]
