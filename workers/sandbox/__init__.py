"""The sandbox executor: untrusted Python under bubblewrap, plain data in and out, no Django."""

from workers.sandbox.runner import (
    BASE_UID,
    SYSTEM_MAXIMUM,
    VERDICTS,
    SandboxLimitError,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    bwrap_available,
    run_sandbox,
)

__all__ = [
    "BASE_UID",
    "SYSTEM_MAXIMUM",
    "VERDICTS",
    "SandboxLimitError",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxRequestError",
    "SandboxResult",
    "bwrap_available",
    "run_sandbox",
]
