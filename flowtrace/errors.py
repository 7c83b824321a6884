"""One exception type for everything a user can cause, each with its own exit code.

The CLI maps a FlowtraceError to one line on stderr and its exit status; anything
else is a bug and keeps its traceback (shown with --traceback).  The exit status of a
command that ran to its end is decided here too (exit_status_for), so every command
means the same by the same number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # a generic failure the user can act on
    USAGE = 2  # bad arguments (click uses 2 as well)
    NOT_ROOT = 3  # needs root (CAP_NET_ADMIN / CAP_NET_RAW / CAP_SYS_ADMIN)
    NO_DOCKER = 4  # no container engine answers (Docker, Podman), or not the one asked for
    NOT_FOUND = 5  # unknown container, namespace, process, address or file
    NOT_RUNNING = 6  # the container exists but is stopped
    NO_PATH = 7  # no route / no interface between the endpoints
    MISSING_TOOL = 8  # a system program or file flowtrace needs is absent
    BAD_CAPTURE = 9  # a pcap set that cannot be read
    NO_REPLY = 10  # a trace ran but not every probe was answered
    #: The pcap set could not be written to its end (a full disk, a read-only file system,
    #: its folder removed): what was recorded before is kept, marked complete: false.
    WRITE_FAILED = 11
    INTERRUPTED = 130  # Ctrl-C: what was recorded is kept


class FlowtraceError(Exception):
    """An error with a one-line message meant for the user."""

    status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, status: ExitStatus | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotRootError(FlowtraceError):
    status = ExitStatus.NOT_ROOT


class DockerUnavailableError(FlowtraceError):
    status = ExitStatus.NO_DOCKER


class NotFoundError(FlowtraceError):
    status = ExitStatus.NOT_FOUND


class NotRunningError(FlowtraceError):
    status = ExitStatus.NOT_RUNNING


class NoPathError(FlowtraceError):
    status = ExitStatus.NO_PATH


class MissingToolError(FlowtraceError):
    status = ExitStatus.MISSING_TOOL


class CaptureFormatError(FlowtraceError):
    status = ExitStatus.BAD_CAPTURE


class SetWriteError(FlowtraceError):
    """The pcap set could not be written (further): ENOSPC, EROFS, a removed folder."""

    status = ExitStatus.WRITE_FAILED

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


def exit_status_for(result: object) -> ExitStatus:
    """The exit status a finished command's result calls for.

    Interrupted (Ctrl-C, SIGTERM): 130, whatever else; a set that could not be written
    to its end: 11; a trace or lookup not answered: 10; a lab that is not whole: 5;
    else 0.  Results say so by their attributes `interrupted`, `write_error`,
    `answered` and `complete`.
    """
    if getattr(result, "interrupted", False):
        return ExitStatus.INTERRUPTED
    if getattr(result, "write_error", None):
        return ExitStatus.WRITE_FAILED
    if getattr(result, "answered", True) is False:
        return ExitStatus.NO_REPLY
    if getattr(result, "complete", True) is False:
        return ExitStatus.NOT_FOUND
    return ExitStatus.OK


def error_status(exc: BaseException) -> tuple[ExitStatus, str] | None:
    """The exit status and one-line message of an exception a user caused, else None
    (a bug: its traceback is shown)."""
    if isinstance(exc, FlowtraceError):
        return exc.status, exc.message
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED, "interrupted"
    if isinstance(exc, PermissionError):
        return (
            ExitStatus.NOT_ROOT,
            f"permission denied ({exc.strerror or exc}): run flowtrace as root",
        )
    return None
