"""The tensor-core tile table's choices for the shape classes its docstring names, and the
W2A8 kernel's K chunk and grid rules (pure Python)."""

from __future__ import annotations

import pytest

from plugins_trt import mma_tiles as mt

H100, AGX_ORIN, ORIN_NANO = 132, 16, 8
FC1, FC2 = (1024, 2048), (1024, 512)  # (M, N) of BitMed ViT's FFN, one image


@pytest.mark.parametrize("tiles", [mt.W2A16_TILES, mt.W2A8_TILES], ids=["w2a16", "w2a8"])
def test_shape_classes_get_the_documented_tiles(tiles):
    pick = lambda m, n, sms: mt.choose_tile(tiles, m, n, sms).name  # noqa: E731
    assert pick(*FC1, H100) == "64x128" and pick(*FC2, H100) == "32x128"
    for sms in (AGX_ORIN, ORIN_NANO):
        assert pick(*FC1, sms) == "128x128" and pick(*FC2, sms) == "128x128"
    for sms in (H100, AGX_ORIN, ORIN_NANO):
        assert pick(16384, 2048, sms) == pick(16384, 512, sms) == "128x128"
        assert pick(16, 2048, sms) == pick(31, 8192, sms) == "32x128"
    assert pick(128, 2048, H100) == "32x128" and pick(2048, 8192, H100) == "128x128"


def test_a_tile_covers_the_sms_when_one_can():
    for m in (16, 100, 1024, 4096):
        for n in (64, 512, 2048, 8192):
            for sms in (8, 16, 132):
                tile = mt.choose_tile(mt.W2A16_TILES, m, n, sms)
                best = max(t.ctas(m, n) for t in mt.W2A16_TILES.values()
                           if t.bm <= max(32, -(-m // 32) * 32))
                assert tile.ctas(m, n) >= min(sms, best)
                assert tile.bm <= max(32, -(-m // 32) * 32)


def test_w2a8_keeps_all_of_k_resident_when_it_fits():
    tile = mt.W2A8_TILES["64x128"]
    assert mt.w2a8_k_span(32) == 512 and mt.w2a8_k_span(33) == 640  # whole 128-wide stages
    assert mt.w2a8_kchunk(tile, 512, 232448) == 512
    chunk = mt.w2a8_kchunk(tile, 8192, 166912)  # an Orin's opt-in shared memory
    assert chunk % mt.W2A8_STAGE_K == 0 and chunk < 8192
    assert mt.w2a8_smem_bytes(tile, chunk) <= 166912 < mt.w2a8_smem_bytes(tile, chunk + 128)
    with pytest.raises(ValueError, match="shared memory"):
        mt.w2a8_kchunk(tile, 512, 40000)


def test_w2a8_grid_walks_n_tiles_only_over_resident_rows():
    tile = mt.W2A8_TILES["128x128"]
    assert mt.w2a8_grid_x(tile, 16384, 2048, H100, resident=False) == 16
    gx = mt.w2a8_grid_x(tile, 16384, 2048, H100, resident=True)
    assert 1 <= gx < 16 and gx * 128 >= mt.CTAS_PER_SM * H100  # still two CTAs per SM
    assert mt.w2a8_grid_x(tile, 1024, 2048, H100, resident=True) == 16  # few rows: spread
