"""The service's own exceptions."""


class ServiceError(Exception):
    """Base class of the service's own errors."""


class ConfigError(ServiceError):
    """Raised when settings from the environment are missing or invalid."""


class DatabaseUnavailable(ServiceError):
    """Raised when no database connection can be had in time: callers answer 503."""


class ProviderError(ServiceError):
    """Raised by a video provider when making a part fails for now; the task is retried.

    The part's remote task (if any) is kept: the next attempt polls it again.
    """


class CreateOutcomeUnknown(ProviderError):
    """Raised by create_clip when the request was sent but its answer was lost (timeout,
    disconnect): the provider may or may not have started a billed task. Never retried
    blindly; the part stays "creating" and a later create counts a possible duplicate."""


class RemoteTaskFailed(ProviderError):
    """Raised when a part's remote task can give no clip (failed, cancelled, expired, or
    its clip URL died): the next attempt creates a new remote task for the part."""


class ProviderRefused(ServiceError):
    """Raised when the provider refuses the request for good (content rejected by its
    moderation, a bad API key, a model not enabled): the task fails at once, no retry.

    `message` is a sentence a person can read; `code` the provider's own error code.
    """

    def __init__(self, message: str, *, code: str = "", content_rejected: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.content_rejected = content_rejected


class StorageError(ServiceError):
    """Raised by a storage backend when storing the video fails; the task is retried."""


class LeaseLost(ServiceError):
    """Raised when a worker no longer holds a task's claim: its lease expired or another
    worker took the task over. The run stops and changes nothing more."""


class ShuttingDown(ServiceError):
    """Raised at a stage boundary once the worker is stopping: the task is handed back."""
