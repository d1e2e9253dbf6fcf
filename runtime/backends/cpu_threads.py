"""How an onnxruntime session's intra-op threads behave on the CPU: how many, and how
they wait between two ops.

By default onnxruntime's pool threads spin (busy-wait) for the next op: a decode step
is hundreds of ops of tens of microseconds each, and waking sleeping threads for each
would cost more than the op. That holds while the model has the cores to itself. When
the daemon serves several models that take turns on the cores, threads spinning inside
one model's run hold cores that the daemon's request handling (gRPC, image decoding,
sampling on the event loop) needs at that moment, and the run waits for it in turn:
measured in docs/results/scheduler (64 clients, an LLM and a ViT on 2 cores), the ViT
classified 68 % more images and the LLM decoded as fast with the threads asleep
between ops, while one model alone decodes about 25 % slower that way. A model alone
that serves many clients at once can gain from sleeping too (a ViT under 64 clients
on 2 cores: 9-14 % more images/s), which its config's `spin: false` says.
"""

from __future__ import annotations

from typing import Any


def apply_cpu_threads(options: Any, threads: int, spin: bool = True) -> None:
    """Set `threads` intra-op threads (0: onnxruntime's default, every core) on an
    onnxruntime SessionOptions; `spin`: they busy-wait between ops, else they sleep."""
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
