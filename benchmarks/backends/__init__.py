"""Model backends (one file each) and their registry."""

from benchmarks.backends.base import (
    Backend,
    CallResult,
    GenerateRequest,
    NextTokenRequest,
    ScoreRequest,
    backends,
    make_backend,
    parse_capabilities,
    register_backend,
)

__all__ = [
    "Backend",
    "CallResult",
    "GenerateRequest",
    "NextTokenRequest",
    "ScoreRequest",
    "backends",
    "make_backend",
    "parse_capabilities",
    "register_backend",
]
