"""The error every executor raises for an expected failure: a stable code, a message, details."""


class JobError(Exception):
    """The job cannot succeed as asked, whatever the number of attempts; `code` says why."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
