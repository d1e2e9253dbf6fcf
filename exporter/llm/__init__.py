"""Decoder-only LLMs (LLaMA and Gemma families): train, read, evaluate, export.

checkpoint.py reads a Hugging Face checkpoint; training.py (with presets.py and
tokenizer.py) trains a small one; evaluation.py scores a checkpoint or package on
text; onnx_graph.py and onnx_graph_gqa.py write the decoder graph, weight_quant.py
its int8/int4 blocks; export.py turns a checkpoint into a verified package.
"""
