"""Tiles of the tensor-core ternary GEMMs (plugins_trt/kernels/ternary_mma.cu) and the rules
that pick a tile, a grid and the shared memory for a shape on a GPU. Pure Python: the
launcher (plugins_trt/kernels.py) reads it; a test keeps W2A16_TILES / W2A8_TILES in step
with the W2A16_TILE / W2A8_TILE lines of the kernel source.

Shape classes and what choose_tile() gives them (M tokens x K x N; an H100 has 132 SMs,
an AGX Orin 16, an Orin Nano 8; tests/plugins_trt/test_mma_tiles.py holds these):

    BitMed ViT, one image   1024 x 512 x 2048: H100 64x128 (256 CTAs), Orin 128x128
                            1024 x 2048 x 512: H100 32x128 (128 CTAs: no tile covers all
                            132 SMs), Orin 128x128
    BitMed ViT, 16 images   16384 x ...: 128x128 everywhere (512 CTAs and more)
    LLM prefill             128-2048 tokens at 2048-8192 widths: 128x128 once its CTAs
                            cover the SMs, else smaller tiles for more CTAs (H100, 128
                            tokens: 32x128)
    a few tokens (16-31)    32x128: fewer idle rows

A tile never has more rows than the tokens need (rounded up to 32), and the largest tile
whose CTAs cover every SM wins: bigger tiles read X and W fewer times, but an idle SM costs
more than a re-read. `e2edge bench kernels` times every tile at each benchmark shape
("tiles" in its JSON), which is how this table is to be revised.
"""

from __future__ import annotations

from dataclasses import dataclass

TENSOR_CORE_MIN_CC = 80  # mma.sync m16n8k16 / m16n8k32 and cp.async need sm_80
MIN_TOKENS = 16  # fewer tokens: the decode GEMV (M <= 8) or the sm_70 tiled kernel
W2A8_MIN_BLOCK = 32  # a k32 int8 mma step must lie inside one scale block
W2A16_STAGE_K = 64  # K per W2A16 pipeline stage (4 packed words per weight row)
W2A8_STAGE_K = 128  # K per W2A8 pipeline stage (8 words), also the kchunk granule
CTAS_PER_SM = 2  # W2A8: enough CTAs along N to keep this many on every SM


@dataclass(frozen=True)
class MmaTile:
    """BM x BN outputs per CTA, warps_m x warps_n warps, a pipeline of `stages` K steps."""

    bm: int
    bn: int
    warps_m: int
    warps_n: int
    stages: int

    @property
    def name(self) -> str:
        return f"{self.bm}x{self.bn}"

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    def ctas(self, M: int, N: int) -> int:
        return -(-M // self.bm) * -(-N // self.bn)


def _table(*tiles: MmaTile) -> dict[str, MmaTile]:
    return {t.name: t for t in tiles}


# (BM, BN, warps along M, warps along N, stages): the W2A16_TILE / W2A8_TILE lines of the .cu
W2A16_TILES = _table(
    MmaTile(128, 128, 2, 4, 4),
    MmaTile(128, 64, 2, 2, 4),
    MmaTile(64, 128, 1, 4, 4),
    MmaTile(64, 64, 2, 2, 4),
    MmaTile(32, 128, 1, 4, 4),
)
W2A8_TILES = _table(
    MmaTile(128, 128, 2, 4, 3),
    MmaTile(128, 64, 2, 2, 4),
    MmaTile(64, 128, 1, 4, 4),
    MmaTile(64, 64, 2, 2, 4),
    MmaTile(32, 128, 1, 4, 4),
)


def choose_tile(tiles: dict[str, MmaTile], M: int, N: int, sms: int) -> MmaTile:
    """The largest tile (rows no more than M rounded up to 32) whose CTAs cover `sms` SMs;
    when none does, the one with the most CTAs. Ties go to the wider tile: X (fp16 or
    int8 per element) is re-read once per column of tiles, the 2-bit W once per row."""
    rows = max(32, -(-M // 32) * 32)
    usable = [t for t in tiles.values() if t.bm <= rows] or list(tiles.values())
    by_size = sorted(usable, key=lambda t: (t.bm * t.bn, t.bn), reverse=True)
    for tile in by_size:
        if tile.ctas(M, N) >= sms:
            return tile
    return max(by_size, key=lambda t: (t.ctas(M, N), t.bn))


def tile_named(tiles: dict[str, MmaTile], name: str) -> MmaTile:
    if name not in tiles:
        raise ValueError(f"no tensor-core tile {name!r}; there are {sorted(tiles)}")
    return tiles[name]


def w2a16_smem_bytes(tile: MmaTile) -> int:
    """Per stage: the X tile (BM, 64) fp16, the packed weights (BN, 4 words) and one scale
    per (row, word); the output tile is staged in the same memory afterwards."""
    return tile.stages * (tile.bm * 128 + tile.bn * 32)


def w2a8_smem_bytes(tile: MmaTile, kchunk: int) -> int:
    """Step and 1/step per token, the quantised rows (BM, kchunk) int8, and per stage the
    packed weights (BN rows of 32 bytes, padded to 48) and one scale per (row, k32 step)."""
    return tile.bm * 8 + tile.bm * kchunk + tile.stages * tile.bn * 64


def w2a8_k_span(k_words: int) -> int:
    """The K the W2A8 kernel walks: the k_words packed words that hold codes, in whole stages."""
    return -(-k_words * 16 // W2A8_STAGE_K) * W2A8_STAGE_K


def w2a8_kchunk(tile: MmaTile, k_span: int, smem_limit: int) -> int:
    """K of quantised rows kept in shared memory at once: all of k_span when it fits in
    `smem_limit` bytes, else as many whole stages as fit."""
    spare = smem_limit - w2a8_smem_bytes(tile, 0)
    fits = spare // tile.bm // W2A8_STAGE_K * W2A8_STAGE_K
    if fits < W2A8_STAGE_K:
        raise ValueError(
            f"W2A8 tile {tile.name} needs more than the {smem_limit} bytes of shared memory "
            "a block may use on this GPU"
        )
    return min(k_span, fits)


def w2a8_grid_x(tile: MmaTile, M: int, N: int, sms: int, resident: bool) -> int:
    """CTAs along N. With all of K resident (`resident`), a CTA walks several N tiles over
    the rows it quantised once, as long as CTAS_PER_SM CTAs per SM remain; else one tile
    each (its rows are quantised again per tile anyway)."""
    n_tiles = -(-N // tile.bn)
    if not resident:
        return n_tiles
    m_blocks = -(-M // tile.bm)
    per_cta = max(1, n_tiles * m_blocks // max(1, CTAS_PER_SM * sms))
    return -(-n_tiles // min(per_cta, n_tiles))
