"""What both APIs share: the served models, their lifecycle, admission, batching,
generation, health and the drain."""
