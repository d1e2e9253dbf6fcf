"""The LLM engine: tokenizer, sampler, KV cache handling and the generation loop."""
