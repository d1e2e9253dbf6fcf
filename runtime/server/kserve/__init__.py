"""The KServe v2 API (Triton's GRPCInferenceService) over the same models."""
