"""The fast backend: the transformer exported to ONNX, run by onnxruntime.

The first start exports the model with torch (a few seconds) and, by default,
quantizes its weights to int8 per output channel; the files are cached under
`cache_dir/<model>-<fingerprint>/`. Every later start reads the cached file and
imports only onnxruntime, tokenizers and numpy: no torch, ~0.3 s, ~100-190 MB.

Tokenising (`tokenizers`), mean pooling over the attention mask and L2
normalisation (numpy) reproduce what sentence-transformers does for
all-MiniLM-L6-v2. int8 vectors are not interchangeable with fp32 ones (about 2%
of hit/miss decisions near a threshold flip), hence the distinct `model_id`.
The int8 model embeds one text per run, so a text's vector never depends on
what it was batched with.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog
from tokenizers import Tokenizer

from service.embedding.base import Vectors
from service.embedding.cpu import int8_kernels
from service.embedding.errors import EmbeddingModelError
from service.embedding.model_files import model_name

log = structlog.get_logger(__name__)

# Bump when the export or quantization recipe changes, so old cached files are not reused.
EXPORT_RECIPE = "torchscript-opset17-int8-per-channel-v1"
ONNX_OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
_FP32_BATCH_SIZE = 32

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ModelShape:
    """What the ONNX path needs to know from the sentence-transformers config files."""

    dim: int
    max_seq_length: int


class OnnxEmbedder:
    """Embeds with onnxruntime; `model_id` ends in `/onnx-int8` (or `/onnx-fp32`).

    Args:
        model_path: a sentence-transformers model directory (mean pooling).
        cache_dir: where exported ONNX files are kept, shared between processes.
        quantize: int8 weights (fast) rather than fp32 (exactly the torch model).
        threads: onnxruntime intra-op threads; 1 stays steady when other
            processes share the cores.

    Attributes:
        onnx_path: the cached ONNX file this embedder runs.

    Raises:
        EmbeddingModelError: the model directory is incomplete or not mean-pooled,
            the export failed, or the cached ONNX file cannot be loaded.
    """

    def __init__(
        self, model_path: Path, cache_dir: Path, quantize: bool = True, threads: int = 1
    ) -> None:
        self._shape = read_model_shape(model_path)
        self._tokenizer = load_tokenizer(model_path, self._shape.max_seq_length)
        self.onnx_path = ensure_onnx_model(model_path, cache_dir, quantize)
        self._session = open_session(self.onnx_path, threads)
        self._input_names = [node.name for node in self._session.get_inputs()]
        self._model_id = f"{model_name(model_path)}/onnx-{'int8' if quantize else 'fp32'}"
        # Dynamic quantization scales activations over the whole input tensor, so in a
        # batch one text's int8 vector shifts with its batch mates (cosine to itself
        # alone ~0.99). One text per run keeps a text's vector fixed, which a cache
        # needs, for ~15% less throughput.
        self._batch_size = 1 if quantize else _FP32_BATCH_SIZE
        self.texts_per_run = self._batch_size  # see `base.texts_per_run`
        # int8 vectors differ slightly between CPU families (see `cpu.int8_kernels`).
        self.int8_kernels = int8_kernels() if quantize else None

    @property
    def model_id(self) -> str:
        """Model name and backend, e.g. `all-MiniLM-L6-v2/onnx-int8`."""
        return self._model_id

    @property
    def dim(self) -> int:
        """Length of each vector (384 for all-MiniLM-L6-v2)."""
        return self._shape.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return `(len(texts), dim)` float32 rows, each L2-normalised."""
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        # Batches of similar length waste less compute on padding.
        order = np.argsort([len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), self._batch_size):
            rows = order[start : start + self._batch_size]
            vectors[rows] = self._embed_batch([texts[row] for row in rows])
        return vectors

    def _embed_batch(self, texts: list[str]) -> Vectors:
        # `encode_batch` releases the GIL (its thread pool) and must take it back: on a
        # busy event loop that wait is up to a switch interval per call. One text needs
        # no pool, and `encode` keeps the GIL for the few microseconds it takes.
        if len(texts) == 1:
            encodings = [self._tokenizer.encode(texts[0])]
        else:
            encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        inputs = {name: feeds[name] for name in self._input_names}
        (hidden,) = self._session.run([OUTPUT_NAME], inputs)
        return mean_pool_normalise(hidden, feeds["attention_mask"])


def mean_pool_normalise(hidden: npt.NDArray[np.float32], attention_mask: IntArray) -> Vectors:
    """Average the token vectors a mask keeps, then scale each row to unit length."""
    weights = attention_mask.astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, weights)
    pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


def read_model_shape(model_path: Path) -> ModelShape:
    """Vector size and token limit of a sentence-transformers model directory.

    Raises:
        EmbeddingModelError: a config file is missing, or the model does not
            use mean pooling (the only pooling implemented here).
    """
    config = _read_json(model_path / "config.json")
    st_config_path = model_path / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    _require_mean_pooling(model_path)
    max_seq_length = st_config.get("max_seq_length") or config["max_position_embeddings"]
    return ModelShape(dim=int(config["hidden_size"]), max_seq_length=int(max_seq_length))


def _require_mean_pooling(model_path: Path) -> None:
    modules_path = model_path / "modules.json"
    modules = _read_json(modules_path) if modules_path.is_file() else []
    for module in modules:
        if str(module.get("type", "")).endswith(".Pooling"):
            pooling = _read_json(model_path / module["path"] / "config.json")
            if not pooling.get("pooling_mode_mean_tokens"):
                raise EmbeddingModelError(
                    f"{model_path} does not use mean pooling; the ONNX backend supports"
                    " only that: choose the torch backend for this model"
                )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EmbeddingModelError(
            f"cannot read {path}: {error}; is this a sentence-transformers model directory?"
        ) from error


def load_tokenizer(model_path: Path, max_seq_length: int) -> Tokenizer:
    """The model's fast tokenizer, truncating at `max_seq_length` and padding per batch.

    Raises:
        EmbeddingModelError: the directory has no readable `tokenizer.json`.
    """
    tokenizer_path = model_path / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as error:  # tokenizers raises a bare Exception for bad files
        raise EmbeddingModelError(f"cannot load {tokenizer_path}: {error}") from error
    # tokenizer.json may carry a fixed padding length; pad to the batch's longest instead.
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    tokenizer.enable_truncation(max_length=max_seq_length)
    return tokenizer


def open_session(onnx_path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session running one request at a time on `threads` threads.

    Raises:
        EmbeddingModelError: the file is not a loadable ONNX model.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise EmbeddingModelError(
            f"cannot load {onnx_path}: {error}; delete {onnx_path.parent} to export it again"
        ) from error


def model_fingerprint(model_path: Path) -> str:
    """16 hex digits naming the model's files and the export recipe.

    Any change to a file in the directory (weights, config, tokenizer) gives a
    new fingerprint, so a changed model is exported afresh rather than served
    from a stale cache. Hashing the ~90 MB of weights takes about 0.1 s.
    """
    digest = hashlib.sha256(EXPORT_RECIPE.encode())
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_path).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:16]


def ensure_onnx_model(model_path: Path, cache_dir: Path, quantize: bool) -> Path:
    """The cached ONNX file for this model, exporting it first if it is not there yet.

    Files are written under a temporary name and renamed into place, and an
    exclusive lock lets one process export while the others wait, so no
    process ever reads half a file.

    Raises:
        EmbeddingModelError: the export or quantization failed.
    """
    model_dir = cache_dir / f"{model_name(model_path)}-{model_fingerprint(model_path)}"
    target = model_dir / ("model-int8.onnx" if quantize else "model-fp32.onnx")
    if target.is_file():
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(model_dir / ".export.lock"):
        if not target.is_file():
            _build(model_path, model_dir, quantize)
    return target


def _build(model_path: Path, model_dir: Path, quantize: bool) -> None:
    try:
        _write_onnx_files(model_path, model_dir, quantize)
    except EmbeddingModelError:
        raise
    except (RuntimeError, OSError, ValueError) as error:
        raise EmbeddingModelError(
            f"exporting {model_path} to ONNX under {model_dir} failed: {error}"
        ) from error


def _write_onnx_files(model_path: Path, model_dir: Path, quantize: bool) -> None:
    fp32_path = model_dir / "model-fp32.onnx"
    started_s = time.perf_counter()
    if not fp32_path.is_file():
        log.info("embedding_onnx_export_started", model_path=str(model_path), to=str(model_dir))
        with _atomic_path(fp32_path) as partial:
            export_transformer(model_path, partial)
    if quantize:
        with _atomic_path(model_dir / "model-int8.onnx") as partial:
            quantize_int8(fp32_path, partial)
    took_s = time.perf_counter() - started_s
    log.info("embedding_onnx_export_done", to=str(model_dir), took_s=round(took_s, 2))


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        partial.chmod(0o644)  # mkstemp makes 0600; the cache may be shared with other users
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def export_transformer(model_path: Path, onnx_path: Path) -> None:
    """Export the model's transformer (token vectors, before pooling) to ONNX.

    torch and transformers are imported here and only here, so a service with
    a warm cache never loads them.

    Raises:
        EmbeddingModelError: torch or transformers is missing, or the export failed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModel
    except ImportError as error:
        raise EmbeddingModelError(
            "exporting the ONNX model needs torch and sentence-transformers:"
            " `make install`, or copy an exported cache directory here"
        ) from error
    encoder = AutoModel.from_pretrained(str(model_path)).eval()
    module = _hidden_state_module(encoder)
    sample = _sample_inputs(model_path)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    # The tracer warns about Python branches in transformers' masking code that do
    # not depend on the inputs for an encoder; the tests check padded batches match torch.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample,
            str(onnx_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _sample_inputs(model_path: Path) -> tuple[Any, ...]:
    import torch

    # Two rows of different length, so the traced graph sees the attention mask in use.
    tokenizer = load_tokenizer(model_path, read_model_shape(model_path).max_seq_length)
    encodings = tokenizer.encode_batch(["a sample sentence to trace", "short"])
    return tuple(
        torch.tensor([getattr(e, field) for e in encodings])
        for field in ("ids", "attention_mask", "type_ids")
    )


def _hidden_state_module(encoder: Any) -> Any:
    import torch

    class LastHiddenState(torch.nn.Module):
        """Calls the encoder by keyword and returns only its token vectors."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            output = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = output.last_hidden_state
            return hidden

    return LastHiddenState()


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Quantize weights to int8, one scale per output channel.

    Per-channel keeps mean cosine to fp32 at about 0.994 (min 0.971); the
    per-tensor default gave 0.968 (min 0.876).

    Raises:
        EmbeddingModelError: the `onnx` package is missing or quantization failed.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise EmbeddingModelError(
            "quantizing the ONNX model needs the `onnx` package: `pip install onnx`"
        ) from error
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True)
