"""int8 CPU inference: the CLIP towers exported to ONNX and quantised by ONNX Runtime.

ONNX Runtime's dynamic quantisation (int8 weights, per output channel; activations quantised
per batch at run time) runs on the CPU's integer dot-product instructions (AVX-512 VNNI,
AMX where present, or AVX2's `vpmaddubsw`, with 7-bit weights there: `products_saturate`).
On a 2-core AVX-512 BF16 CPU, ViT-B-32's image tower ran ~2.4x faster than pixsearch's
packed bfloat16 and ~3x faster than float32, minimum cosine 0.9998 to float32 (random
weights; benchmarks/bench_index.py). PyTorch's own paths were measured too: eager
`quantize_dynamic` (deprecated) about as fast as bf16, torchao's int8 dynamic-activation
config 2.5x slower than bf16 on the CPU; OpenVINO's bf16 no clear gain.

Exporting and quantising take seconds (more for big models), so the quantised graphs are
kept on disk, named by the model and its checkpoint's size and time, and reused.
ONNX Runtime is a dependency; an install without it (trimmed by hand) has no int8.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import ModelUnavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Bump when the exported graphs change, so stale files are not reused.
_FORMAT = 1


def available() -> str | None:
    """None when int8 can run here, else why not (one line for a user)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "ONNX Runtime is not installed (pip install onnxruntime onnx)"
    return None


def graph_name(key: str, checkpoint: str) -> str:
    """A file-name stem for this model's quantised graphs, changing with its checkpoint: its
    content for files up to 64 MB (cheap to hash), else its path, size and time."""
    stamp = key
    path = Path(checkpoint).expanduser()
    if path.is_file():
        st = path.stat()
        if st.st_size <= 64 << 20:
            stamp += "|" + hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            stamp += f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(f"{stamp}|{_FORMAT}".encode()).hexdigest()[:16]
    return f"{key.replace('/', '--')}-{digest}"


class Int8Towers:
    """The image and text towers of an open_clip model as int8 ONNX Runtime sessions."""

    def __init__(
        self,
        model: Any,
        folder: Path,
        name: str,
        threads: int = 0,
        towers: tuple[str, ...] = ("image", "text"),
        seven_bit: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        folder.mkdir(parents=True, exist_ok=True)
        #: Weights quantised to 7 bits, where this CPU's 8-bit products would saturate
        #: (None: ask ONNX Runtime, `products_saturate`).
        self.seven_bit = products_saturate() if seven_bit is None else seven_bit
        suffix = "int8w7" if self.seven_bit else "int8"
        paths = {}
        for tower in towers:
            path = folder / f"{name}.{tower}.{suffix}.onnx"
            if not path.is_file():
                try:
                    _export_quantised(model, tower, path, seven_bit=self.seven_bit)
                except (RuntimeError, ValueError, TypeError, OSError) as exc:
                    raise ModelUnavailable(
                        f"cannot convert the {tower} tower to int8: {str(exc)[:200]}"
                    ) from None
            paths[tower] = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # Sleeping, not spinning, while waiting: the decoding threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sessions = {
                tower: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for tower, path in paths.items()
            }
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            for path in paths.values():
                path.unlink(missing_ok=True)
            raise ModelUnavailable(f"cannot load the int8 model ({exc}); try again") from None
        self.truncates_text = _text_truncates(model)

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """Image embeddings (not unit length) of normalised float32 NCHW pixels."""
        return self._sessions["image"].run(None, {"pixels": np.ascontiguousarray(x, np.float32)})[0]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """Text embeddings (not normalised) of int64 tokens (n, length)."""
        return self._sessions["text"].run(None, {"tokens": tokens.astype(np.int64)})[0]


def _text_truncates(model: Any) -> bool:
    from indexer.encoder import text_prefix_supported

    return text_prefix_supported(model)


_saturates: bool | None = None


def products_saturate() -> bool:
    """Whether ONNX Runtime's int8 products saturate on this CPU (cached).

    Without VNNI (AVX2-only CPUs), ONNX Runtime multiplies uint8 activations by int8 weights
    with `vpmaddubsw`, which adds pairs of products into int16 and clips them: with full 8-bit
    weights, embeddings of real photos fell to cosine 0.985 of float32 (ViT-B-32, CPUID
    limited to AVX2). Weights of 7 bits cannot overflow it (ONNX Runtime's `reduce_range`).
    Asked of the runtime itself, with one product that overflows 16 bits, rather than read
    from CPU flags: it is the kernel ONNX Runtime picks that matters.
    """
    global _saturates
    if _saturates is None:
        try:
            _saturates = bool((probe_products() != PROBE_EXACT).any())
        except Exception as exc:  # an odd ONNX Runtime build: 7 bits are right on every CPU
            log.warning("cannot probe ONNX Runtime's int8 products (%s): using 7-bit weights", exc)
            _saturates = True
        else:
            if _saturates:
                log.info("this CPU's int8 products saturate (no VNNI): int8 weights use 7 bits")
    return _saturates


#: The probe's depth: 128 products of 255 x 127 sum to 4,145,280, or to 64 x 32,767 = 2,097,088
#: when each pair is clipped to int16.
_PROBE_K = 128
PROBE_EXACT = 255 * 127 * _PROBE_K
PROBE_CLIPPED = 32_767 * _PROBE_K // 2


def probe_products() -> np.ndarray:
    """ONNX Runtime's int32 results (16, 16) of uint8 255s times int8 127s, `_PROBE_K` deep."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "saturation-probe",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [16, _PROBE_K]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [_PROBE_K, 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [16, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # The onnx package may write a newer IR version than this ONNX Runtime reads.
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    a = np.full((16, _PROBE_K), 255, np.uint8)
    b = np.full((_PROBE_K, 16), 127, np.int8)
    return np.asarray(session.run(None, {"a": a, "b": b})[0])


def _export_quantised(model: Any, tower: str, dest: Path, seven_bit: bool = False) -> None:
    """Export one tower to ONNX (float32), quantise it dynamically to int8 (`seven_bit`:
    weights within 7 bits, see `products_saturate`), write `dest`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    module, example, names, axes = _tower(model, tower)
    with tempfile.TemporaryDirectory(prefix="pixsearch-onnx-", dir=dest.parent) as tmp:
        plain = Path(tmp) / "plain.onnx"
        with _exportable_attention(model), torch.no_grad(), _quiet():
            torch.onnx.export(
                module,
                (example,),
                str(plain),
                input_names=[names[0]],
                output_names=[names[1]],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        quantised = Path(tmp) / "int8.onnx"
        with _quiet():
            quantize_dynamic(
                str(plain),
                str(quantised),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=seven_bit,
                # Only the matrix products: the rest stays float32, as in the bf16 path.
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        os.replace(quantised, dest)
    log.info("wrote the int8 %s tower to %s", tower, dest)


def _tower(model: Any, tower: str) -> tuple[Any, Any, tuple[str, str], dict[str, Any]]:
    import torch

    from indexer.encoder import encode_text_prefix, text_prefix_supported

    if tower == "image":
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size

        class Image(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(x)

        example = torch.zeros(2, 3, int(size), int(size))
        axes = {"pixels": {0: "n"}, "embeddings": {0: "n"}}
        return Image(), example, ("pixels", "embeddings"), axes

    truncates = text_prefix_supported(model)

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            if truncates:  # tokens cut after the longest text's end token (any length)
                return encode_text_prefix(self.model, tokens)
            return self.model.encode_text(tokens)

    length = int(getattr(model, "context_length", 77))
    example = torch.ones(2, length, dtype=torch.long)
    axes = {"tokens": {0: "n", 1: "length"} if truncates else {0: "n"}}
    axes["embeddings"] = {0: "n"}
    return Text(), example, ("tokens", "embeddings"), axes


class _DropOnnxRuntimeNotes(logging.Filter):
    """ONNX Runtime's quantiser logs advice on the root logger; a user needs none of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname and "onnx" not in record.name


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and the quantiser's warnings and notes (not errors)."""
    root = logging.getLogger()
    notes = _DropOnnxRuntimeNotes()
    root.addFilter(notes)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(notes)


@contextlib.contextmanager
def _exportable_attention(model: Any) -> Iterator[None]:
    """Swap the model's `nn.MultiheadAttention`s for an equivalent that exports with dynamic
    batch and sequence sizes (torch's own bakes the example's sizes into its reshapes, and its
    fused inference kernel has no ONNX form); put them back after."""
    import torch

    swapped: list[tuple[Any, str, Any]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MultiheadAttention) and _exportable(child):
                setattr(parent, name, _ExportAttention(child))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _exportable(mha: Any) -> bool:
    return bool(
        mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and not mha.add_zero_attn
    )


def _export_attention_class() -> type:
    import torch
    import torch.nn.functional as F

    class ExportAttention(torch.nn.Module):
        """Self-attention as `nn.MultiheadAttention` computes it, without its size arithmetic."""

        def __init__(self, mha: torch.nn.MultiheadAttention) -> None:
            super().__init__()
            self.mha = mha
            self.heads = mha.num_heads
            self.head_dim = mha.embed_dim // mha.num_heads

        def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            key_padding_mask: torch.Tensor | None = None,
            need_weights: bool = False,
            attn_mask: torch.Tensor | None = None,
            **_: Any,
        ) -> tuple[torch.Tensor, None]:
            if key_padding_mask is not None or query is not key or key is not value:
                raise NotImplementedError("int8 export handles plain self-attention only")
            mha = self.mha
            x = query if mha.batch_first else query.transpose(0, 1)
            qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
            q, k, v = (
                t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
                for t in qkv.chunk(3, dim=-1)
            )
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                    attn_mask, float("-inf")
                )
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            out = mha.out_proj(out.transpose(1, 2).flatten(2))
            return (out if mha.batch_first else out.transpose(0, 1)), None

    return ExportAttention


def _ExportAttention(mha: Any) -> Any:
    return _export_attention_class()(mha)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A float32 numpy array of a CPU tensor."""
    return x.float().contiguous().numpy()
