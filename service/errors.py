"""The service's own exceptions."""


class ServiceError(Exception):
    """Base class of the service's own errors."""


class ConfigError(ServiceError):
    """Raised when settings from the environment are missing or invalid."""


class DatabaseUnavailable(ServiceError):
    """Raised when no database connection can be had in time: callers answer 503."""


class ProviderError(ServiceError):
    """Raised by a video provider when rendering a part fails; the task is retried."""


class StorageError(ServiceError):
    """Raised by a storage backend when storing the video fails; the task is retried."""


class LeaseLost(ServiceError):
    """Raised when a worker no longer holds a task's lease: another worker took it over."""
