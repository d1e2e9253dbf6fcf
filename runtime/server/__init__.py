"""The gRPC daemon: daemon.py builds it from core/, edge/, kserve/ and guard/."""
