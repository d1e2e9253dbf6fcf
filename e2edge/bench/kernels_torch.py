"""The kernels on torch CUDA tensors, for the GPU tests and `e2edge bench kernels`.

torch only provides device memory and the stream here: the kernels run through
plugins_trt.kernels (NVRTC + the CUDA driver via cuda-python), the same launch code the
TensorRT plugins use. torch and cuda-python share the device's primary context.
"""

from __future__ import annotations

import numpy as np
import torch

from plugins_trt import kernels
from plugins_trt.reference import packed_to_words

_DTYPES = {torch.float16: "float16", torch.float32: "float32"}


def _dtype_name(t: torch.Tensor) -> str:
    if t.dtype not in _DTYPES:
        raise ValueError(f"activations must be float16 or float32, got {t.dtype}")
    return _DTYPES[t.dtype]


def _check(t: torch.Tensor, name: str) -> None:
    if not t.is_cuda or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CUDA tensor")


def _stream() -> int:
    return int(torch.cuda.current_stream().cuda_stream)


def upload_packed(packed: np.ndarray, scales: np.ndarray, device: str = "cuda"):
    """Layout arrays -> (words (N, K_pad/16) int32, scales (N, n_blocks) float32) on the GPU."""
    n = packed.shape[0]
    words = torch.from_numpy(packed_to_words(packed).copy()).to(device)
    scale = torch.from_numpy(np.ascontiguousarray(scales, np.float32).reshape(n, -1)).to(device)
    return words, scale


def random_ternary_weights(k: int, n: int, copies: int, block_size: int, seed: int = 0):
    """`copies` copies of one random ternary (N, K) weight, scale 0.02, uploaded: (list of
    words (N, K_pad/16) int32, list of scales (N, n_blocks) float32)."""
    from runtime.ternary_layout import pack_ternary

    rng = np.random.default_rng(seed)
    ternary = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    packed, scales = pack_ternary(ternary, np.float32(0.02), block_size)
    words, scale_t = upload_packed(packed, scales)
    return [words.clone() for _ in range(copies)], [scale_t.clone() for _ in range(copies)]


def workspace(nbytes: int, device: str = "cuda") -> torch.Tensor | None:
    return torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None


def ternary_matmul(
    x: torch.Tensor,
    words: torch.Tensor,
    scales: torch.Tensor,
    k: int,
    block_size: int,
    activation_bits: int = 16,
    path: str = "auto",
    tile: str | None = None,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Y (M, N) = X (M, K) @ dequant(W).T; see plugins_trt.reference.ternary_matmul (and
    ternary_matmul_int8 for the tensor-core W2A8 kernel). path / tile: as the launcher's."""
    for t, name in ((x, "x"), (words, "words"), (scales, "scales")):
        _check(t, name)
    geometry = kernels.TernaryGeometry(K=k, N=words.shape[0], block_size=block_size)
    m = x.shape[0]
    if x.shape != (m, k):
        raise ValueError(f"x must be (M, {k}), got {tuple(x.shape)}")
    if words.shape != (geometry.N, geometry.words_per_row):
        raise ValueError(
            f"words must be {(geometry.N, geometry.words_per_row)}, got {tuple(words.shape)}"
        )
    if out is None:
        out = torch.empty((m, geometry.N), dtype=x.dtype, device=x.device)
    need = kernels.ternary_workspace_bytes(
        m, geometry, activation_bits, cc=kernels.LIBRARY.device().cc
    )
    if scratch is None or scratch.numel() < need:
        scratch = workspace(need, str(x.device))
    kernels.launch_ternary_matmul(
        x=x.data_ptr(),
        words=words.data_ptr(),
        scales=scales.data_ptr(),
        y=out.data_ptr(),
        M=m,
        geometry=geometry,
        dtype=_dtype_name(x),
        stream=_stream(),
        activation_bits=activation_bits,
        workspace=scratch.data_ptr() if scratch is not None else 0,
        path=path,
        tile=tile,
    )
    return out


def sparse_ffn(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    activation: str,
    indices: torch.Tensor | None = None,
    width: int | None = None,
    device_width: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gated FFN over the active neurons; see plugins_trt.reference.sparse_ffn.

    indices: int32 (A,) neuron ids; width: prefix width on the host; device_width: int32
    (1,) prefix width on the GPU (the grid covers all F neurons, extra blocks exit).
    """
    for t, name in ((x, "x"), (w_gate, "w_gate"), (w_up, "w_up"), (w_down, "w_down")):
        _check(t, name)
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have the activations' dtype {x.dtype}")
    m, d = x.shape
    f = w_gate.shape[0]
    if indices is not None:
        _check(indices, "indices")
        if indices.dtype != torch.int32:
            raise ValueError("indices must be int32")
        n_active = indices.numel()
    elif device_width is not None:
        _check(device_width, "device_width")
        n_active = f
    else:
        n_active = f if width is None else width
    if out is None:
        out = torch.empty((m, d), dtype=x.dtype, device=x.device)
    need = kernels.sparse_ffn_workspace_bytes(m, d, f, _dtype_name(x))
    if scratch is None or scratch.numel() < need:
        scratch = workspace(need, str(x.device))
    kernels.launch_sparse_ffn(
        x=x.data_ptr(),
        w_gate=w_gate.data_ptr(),
        w_up=w_up.data_ptr(),
        w_down=w_down.data_ptr(),
        y=out.data_ptr(),
        M=m,
        D=d,
        F=f,
        activation=activation,
        dtype=_dtype_name(x),
        n_active=n_active,
        indices=indices.data_ptr() if indices is not None else 0,
        width=device_width.data_ptr() if device_width is not None else 0,
        workspace=scratch.data_ptr(),
        stream=_stream(),
    )
    return out
