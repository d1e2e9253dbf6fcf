"""Generation from a package with the runtime alone: cache, sampling, stop, limits."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from runtime.errors import BackendUnavailable, InvalidRequest, PackageError
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_llama_package) -> LLMEngine:
    return LLMEngine.load(tiny_llama_package)


def _run(engine, prompt, **params):
    events = list(engine.generate(prompt, SamplingParams(**params)))
    ids = [t for e in events for t in e.token_ids]
    return events, ids, "".join(e.text for e in events)


def test_greedy_equals_argmax_of_full_recompute(engine):
    """The cached decode loop gives the tokens a cache-free recompute gives."""
    prompt = engine.encode("To be, or not")
    _, ids, _ = _run(engine, prompt, max_new_tokens=12, ignore_eos=True)
    sequence = list(prompt)
    for _ in range(12):
        logits, _ = engine.forward(np.asarray([sequence]), 0, engine.empty_cache())
        sequence.append(int(np.argmax(logits[0, -1])))
    assert ids == sequence[len(prompt):]


def test_concat_cache_stays_in_the_backend_between_steps(tiny_llama_package_standard):
    import onnxruntime as ort

    engine = LLMEngine.load(tiny_llama_package_standard)
    assert engine.layout.cache_mode == "concat"
    _, cache = engine.forward(np.asarray([[5, 6, 7]]), 0, engine.empty_cache())
    assert all(isinstance(v, ort.OrtValue) for v in cache.values())
    assert cache["past_key_values.0.key"].shape() == [1, 2, 3, 16]


def test_shared_buffer_is_written_in_place(engine):
    assert engine.layout.cache_mode == "shared_buffer"
    buffer = engine.empty_cache(capacity=8)
    _, cache = engine.forward(np.asarray([[5, 6, 7]]), 0, buffer)
    assert cache is buffer  # no new cache tensors: the graph wrote into the buffer
    keys = buffer.arrays["past_key_values.0.key"]
    assert keys.shape == (1, 2, 8, 16)
    assert np.abs(keys[0, :, :3]).min() > 0 and not keys[0, :, 3:].any()
    engine.forward(np.asarray([[8]]), 3, buffer)
    assert np.abs(keys[0, :, 3]).min() > 0 and not keys[0, :, 4:].any()



def test_decode_steps_reuse_one_io_binding_and_match_fresh_bindings(engine):
    """A KV buffer's slot view keeps its onnxruntime binding from step to step, inputs
    and logits included; the logits equal those of a binding built anew for every step,
    through changes of shape (prefill, one token, two tokens, one again), and each
    step's logits stay as they were when later steps run."""
    prompt = np.asarray([[5, 6, 7, 8]])
    reused, fresh = engine.empty_cache(capacity=16), engine.empty_cache(capacity=16)
    past, present = fresh.bindings(0, 1)
    fresh._views[(0, 1)] = (past, dict(present))  # a plain dict: no state to reuse
    tokens, seen, outputs, kept_logits = [], set(), [], []
    new_tokens = [4, 1, 1, 1, 2, 1, 1]
    total = 0
    for step, count in enumerate(new_tokens):
        ids = prompt if step == 0 else np.asarray([tokens[-count:]])
        total += count
        a = engine.step(ids, [total], reused)
        b = engine.step(ids, [total], fresh)
        np.testing.assert_array_equal(a, b)
        outputs.append((a, b.copy()))
        tokens.append(int(np.argmax(a[0, -1])))
        if count == 2:
            tokens.append(int(np.argmax(a[0, 0])))
        (kept,) = reused.bindings(0, 1)[1].backend_state.values()
        seen.add(id(kept.binding))
        kept_logits.append(id(kept.outputs.get("logits")))
    assert len(seen) == 1  # one binding served every step, prefill included
    # Steps 3 and 4 had the shapes of step 2: their logits landed in the same bound array.
    assert kept_logits[1] == kept_logits[2] == kept_logits[3]
    for a, b in outputs:  # returned logits are copies: later steps did not overwrite them
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reused.arrays["past_key_values.0.key"],
                                  fresh.arrays["past_key_values.0.key"])

def test_a_gqa_package_takes_the_cuda_provider_and_refuses_tensorrt(tiny_llama_package):
    assert LLMEngine.load(tiny_llama_package).providers == ["CPUExecutionProvider"]
    # Accepted: without onnxruntime-gpu, the one line says that is what is missing.
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu is not installed"):
        LLMEngine.load(tiny_llama_package, providers=["CUDAExecutionProvider"])
    with pytest.raises(PackageError, match="CUDA or CPU provider, not"):
        LLMEngine.load(tiny_llama_package, providers=["TensorrtExecutionProvider"])
    with pytest.raises(PackageError, match="--attention standard"):
        LLMEngine.load(tiny_llama_package, backend="tensorrt")


def _kv_bound_by_address(engine: LLMEngine) -> LLMEngine:
    """The engine with its KV buffers held by onnxruntime and bound by address, as on the
    CUDA provider; here the address is host memory (device "cpu"), the code path the same."""
    device = copy.copy(engine)
    device.backend = copy.copy(engine.backend)
    device.backend.kv_on_device = True
    return device


def test_a_kv_buffer_bound_by_address_gives_the_same_tokens(engine):
    device = _kv_bound_by_address(engine)
    cache = device.empty_cache(capacity=8)
    assert cache.on_device and not hasattr(cache, "arrays")
    params = dict(max_new_tokens=24, ignore_eos=True)
    assert _run(device, "To be, or not", **params)[1] == _run(engine, "To be, or not", **params)[1]


def test_continuous_batching_moves_slots_inside_an_address_bound_buffer(engine):
    """Streams of different lengths leave in turn: the last slot moves into the freed one
    (copies within the buffer), and every stream still gets its tokens."""
    from runtime.llm.continuous_batching import ContinuousBatcher

    prompts = ["To be", "The quick brown fox", "Hello", "Once upon a time"]
    params = [SamplingParams(max_new_tokens=13 + 9 * i, ignore_eos=True) for i in range(4)]
    alone = [_run(engine, p, **dataclasses.asdict(s))[1] for p, s in zip(prompts, params)]
    batcher = ContinuousBatcher(_kv_bound_by_address(engine), slots=4, capacity=64)
    try:
        assert batcher.buffer.on_device
        moves = []
        move = batcher.buffer.move
        batcher.buffer.move = lambda *args: (moves.append(args), move(*args))
        streams = [batcher.generate(p, s) for p, s in zip(prompts, params)]
        together = [[t for e in stream for t in e.token_ids] for stream in streams]
    finally:
        batcher.close()
    assert together == alone
    assert moves  # the first, shortest stream left slot 0 while the others ran


def test_both_graphs_give_the_same_logits(engine, tiny_llama_package_standard):
    standard = LLMEngine.load(tiny_llama_package_standard)
    ids = np.asarray([engine.encode("To be, or not to be")])
    fused, _ = engine.forward(ids, 0, engine.empty_cache())
    plain, _ = standard.forward(ids, 0, standard.empty_cache())
    np.testing.assert_allclose(fused, plain, atol=1e-4)


def test_same_seed_same_text_and_seeds_differ(engine):
    params = dict(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, seed=7,
                  ignore_eos=True)
    first = _run(engine, "The quick", **params)[1]
    again = _run(engine, "The quick", **params)[1]
    other = _run(engine, "The quick", **{**params, "seed": 8})[1]
    assert first == again
    assert first != other


def test_final_event_carries_reason_and_stats(engine):
    events, ids, text = _run(engine, "Energy", max_new_tokens=5, ignore_eos=True)
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    stats = events[-1].stats
    assert stats.completion_tokens == 5 == len(ids)
    assert stats.prompt_tokens == len(engine.encode("Energy"))
    assert 0 < stats.time_to_first_token_s <= stats.finished_at - stats.started_at
    assert stats.decode_tokens_per_s > 0
    assert text == engine.decode(ids)


def test_top_k_one_is_greedy_and_repetition_penalty_changes_output(engine):
    greedy = _run(engine, "First", max_new_tokens=16, ignore_eos=True)[1]
    top1 = _run(engine, "First", max_new_tokens=16, temperature=0.8, top_k=1, seed=1,
                ignore_eos=True)[1]
    assert top1 == greedy
    penalised = _run(engine, "First", max_new_tokens=16, repetition_penalty=5.0,
                     ignore_eos=True)[1]
    assert penalised != greedy
    assert len(set(penalised)) >= len(set(greedy))


def test_stop_string_cuts_text_before_it(engine):
    _, _, text = _run(engine, "The", max_new_tokens=40, ignore_eos=True)
    stop = text[10:13]
    assert len(stop) == 3
    events, _, cut = _run(engine, "The", max_new_tokens=40, ignore_eos=True, stop=(stop,))
    assert events[-1].finish_reason == "stop"
    assert cut == text[: text.index(stop)]


def test_eos_ends_generation_unless_ignored(engine):
    greedy = _run(engine, "The", max_new_tokens=6, ignore_eos=True)[1]
    # declare the third greedy token the end of sequence
    eos_engine = copy.copy(engine)
    eos_engine.layout = dataclasses.replace(engine.layout, eos_token_ids=(greedy[2],))
    events, ids, _ = _run(eos_engine, "The", max_new_tokens=6)
    assert events[-1].finish_reason == "eos"
    assert ids == greedy[:3]
    _, ignored, _ = _run(eos_engine, "The", max_new_tokens=6, ignore_eos=True)
    assert len(ignored) == 6 and greedy[2] not in ignored


def test_cancellation_stops_within_one_step(engine):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    events = list(engine.generate("The", SamplingParams(max_new_tokens=50, ignore_eos=True),
                                  cancelled))
    assert events[-1].finish_reason == "cancelled"
    assert sum(len(e.token_ids) for e in events) == 3


@pytest.mark.parametrize(
    "prompt, params, field",
    [
        ("", {}, "prompt"),
        ([], {}, "prompt"),
        ([1, 99999], {}, "prompt"),
        ("hi", {"max_new_tokens": 0}, "max_new_tokens"),
        ("hi", {"max_new_tokens": 300}, "max_new_tokens"),
        ("hi", {"temperature": -1.0}, "temperature"),
        ("hi", {"top_p": 0.0}, "top_p"),
        ("hi", {"top_k": -2}, "top_k"),
        ("hi", {"repetition_penalty": 0.0}, "repetition_penalty"),
        ("hi", {"stop": ("",)}, "stop"),
    ],
)
def test_bad_requests_name_the_field(engine, prompt, params, field):
    with pytest.raises(InvalidRequest) as info:
        engine.generate(prompt, SamplingParams(**params))
    assert info.value.field == field


def test_context_length_error_is_clear(engine):
    with pytest.raises(InvalidRequest, match="exceeds the context length 256"):
        engine.generate([5] * 200, SamplingParams(max_new_tokens=100))


def test_corrupt_package_is_refused_naming_the_file(tmp_path, tiny_llama_package):
    broken = tmp_path / "pkg"
    shutil.copytree(tiny_llama_package, broken)
    data = broken / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match="model.onnx.data: sha256 does not match"):
        LLMEngine.load(broken)
    (broken / "manifest.json").write_text("{")
    with pytest.raises(PackageError, match="manifest.json: not valid JSON"):
        LLMEngine.load(broken)


def test_runtime_generates_without_importing_torch(tiny_llama_package):
    script = textwrap.dedent(f"""
        import sys
        from runtime.llm.engine import LLMEngine
        from runtime.llm.sampling import SamplingParams
        engine = LLMEngine.load({str(tiny_llama_package)!r})
        text = "".join(e.text for e in engine.generate("The", SamplingParams(max_new_tokens=8)))
        banned = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not banned, banned
        print("ok", engine.providers)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok ['CPUExecutionProvider']" in result.stdout


def test_fp16_attention_as_on_cuda_matches_the_fp32_graph(engine, tiny_llama_package):
    """The load-time rewrite the CUDA provider gets (its GroupQueryAttention kernel is fp16
    only), run here on the CPU provider: fp16 KV buffer, logits close to the fp32 graph."""
    half = LLMEngine.load(tiny_llama_package, fp16_attention=True)
    cache = half.empty_cache(capacity=32)
    assert cache.dtype == np.float16 and engine.empty_cache(capacity=32).dtype == np.float32
    ids = np.asarray([engine.encode("To be, or not to be")])
    full, _ = engine.forward(ids, 0, engine.empty_cache())
    rounded, _ = half.forward(ids, 0, cache)
    assert np.abs(full - rounded).max() <= 2e-3 * np.abs(full).max()
    params = dict(max_new_tokens=16, ignore_eos=True)
    tokens = _run(engine, "To be", **params)[1]
    assert _run(half, "To be", **params)[1] == tokens
    assert _run(_kv_bound_by_address(half), "To be", **params)[1] == tokens  # as on the GPU
