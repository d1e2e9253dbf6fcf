"""MAGRIP: magnitude- and gradient-informed structured pruning of LLM FFN neurons.

The pruning unit is FFN intermediate neuron i of a gated FFN (SwiGLU, GeGLU): it owns
gate row i, up row i and down column i, and its activation is
u_i = act(gate_i(h)) * up_i(h), the input of `down_proj`. `pipeline.prune_checkpoint`
scores the neurons (saliency.py), picks the ones to keep layer by layer (allocation.py)
in a coarse pass and a few fine passes, refines the choice with a trained binary mask
(mask.py), removes the rest physically (compaction.py), optionally fine-tunes
(finetune.py) and writes a smaller dense checkpoint (checkpoint_out.py). options.py
holds every setting, torch-free; report.py sweeps methods and ratios; brute_force.py
checks the scorers against removing neurons one by one.
"""
