"""How the daemon serves a vision model: dynamic batching and input limits.

Both are per-model sections of the daemon config (runtime/config.py reads them and
adds file and line to any complaint raised here):

    models:
      - name: retina
        path: ../artifacts/vit/pkg/retina-student-ffn
        batching:                  # absent = off: every request runs alone
          max_batch: 16            # images per model run; 1 = off
          max_delay_ms: 5          # how long the first request waits for others to join
        image_limits:
          max_bytes: 16777216      # one encoded image or tensor
          max_pixels: 25000000     # width x height, read from the header before decoding
          max_images: 64           # images in one request

LLM models accept the sections and ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config_field import setting

MAX_DELAY_MS_LIMIT = 1000.0  # a batch window longer than a second is a misconfiguration
MAX_BATCH_LIMIT = 1024  # images per model run
MAX_IMAGES_LIMIT = 4096  # images per Classify request


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of one vision model (runtime/server/core/batcher.py)."""

    max_batch: int = setting(1, doc=f"""
        Images per model run, 1 to {MAX_BATCH_LIMIT}: requests that arrive close together
        run as one batch up to this many images (a request is never split). 1 = off:
        every request runs alone.""")
    max_delay_ms: float = setting(0.0, doc=f"""
        How long, in milliseconds (0 to {MAX_DELAY_MS_LIMIT:g}), the oldest waiting request
        waits for others to join its batch while a worker is free; under load a batch
        starts as soon as a worker frees up, so the delay is paid only when the model is
        idle.""")

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0.0 <= self.max_delay_ms <= MAX_DELAY_MS_LIMIT:
            raise ValueError(f"max_delay_ms must be in [0, {MAX_DELAY_MS_LIMIT:g}], "
                             f"got {self.max_delay_ms}")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


@dataclass(frozen=True)
class ImageLimits:
    """What one request may send; a violation is INVALID_ARGUMENT naming the limit."""

    # 16 MiB: the daemon's default gRPC message limit, so by default a single image
    # may fill a message; a 4096 x 4096 16-bit DICOM is 32 MiB and needs both raised.
    max_bytes: int = setting(16 * 1024 * 1024, doc="""
        Bytes of one encoded image or raw tensor. A 4096 x 4096 16-bit DICOM is 32 MiB:
        raise this and the top-level `max_message_bytes` together.""")
    # 25 MP covers mammograms (about 4000 x 5000) and 4K camera frames, and bounds a
    # decoded image to 25e6 x 4 channels x 4 bytes = 400 MB of float32.
    max_pixels: int = setting(25_000_000, doc="""
        Width x height of one image, read from its header before it is decoded.""")
    max_images: int = setting(64, doc=f"""
        Images in one Classify request, 1 to {MAX_IMAGES_LIMIT}.""")

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
