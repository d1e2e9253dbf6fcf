"""The EdgeRuntime API (runtime.proto): Generate, Classify, the model list, WatchPower."""
