"""The one exception tree of LOPInfer.

Every error the library raises on purpose derives from :class:`LopInferError`, so a
caller can catch the family with one clause. Errors from libraries (torch.export,
asyncio, aiohttp, lz4, ...) are mapped at the boundary (``raise X(...) from exc``) and
never leak out raw. Messages are one line and name the cause.
"""

from __future__ import annotations

__all__ = [
    "LopInferError",
    "CaptureError",
    "UnsupportedModelError",
    "InputError",
    "PlanError",
    "TransportError",
    "ConnectError",
    "ConnectionClosedError",
    "TransportTimeoutError",
    "ProtocolError",
    "ProtocolVersionError",
    "DeployError",
    "AuthError",
    "RemoteError",
    "UnknownDeploymentError",
    "ProfileError",
    "BusyError",
    "IdleError",
    "ModelChangedError",
    "MissingDependencyError",
    "REMOTE_CODES",
    "error_code",
    "remote_error",
]


class LopInferError(Exception):
    """Base of every error LOPInfer raises on purpose."""


class CaptureError(LopInferError):
    """The model could not be captured by ``torch.export`` (names construct and module path)."""


class UnsupportedModelError(LopInferError):
    """The model was captured but cannot be run by LOPInfer (e.g. no floating-point tensors)."""


class InputError(LopInferError, ValueError):
    """Inputs do not match what the model was captured with (count, shape, dtype)."""


class PlanError(LopInferError):
    """A plan is invalid for its graph (names the offending node)."""


class TransportError(LopInferError):
    """A transport failed: the link or the peer is gone or unusable."""


class ConnectError(TransportError):
    """Could not connect to, or listen on, the given address.

    ``reason`` says why, when the client could tell: ``"refused"`` (nothing listens),
    ``"timeout"`` (no answer: unreachable or filtered), ``"dns"`` (the name does not
    resolve), ``"unreachable"`` (no route), ``"tls"`` (the handshake failed),
    ``"no_hello"`` (connected, but no LOPInfer server answered), or ``""``.
    """

    reason: str = ""


class ConnectionClosedError(TransportError):
    """The peer closed the connection, or it broke (possibly mid-frame)."""


class TransportTimeoutError(TransportError, TimeoutError):
    """A wait on the peer ran past its timeout."""


class ProtocolError(LopInferError):
    """Bytes from the peer do not form a valid frame or message."""


class ProtocolVersionError(ProtocolError):
    """Client and server speak different protocol versions (install the same lopinfer)."""


class DeployError(ProtocolError):
    """A deployed graph or its weights fail validation (names the node or field)."""


class AuthError(LopInferError):
    """The server refused the client's token."""


class RemoteError(LopInferError):
    """The peer reported an error while serving a request."""


class UnknownDeploymentError(RemoteError):
    """The server has no deployment under that content hash (the client uploads it)."""


class ProfileError(RemoteError):
    """The server could not profile the deployed model on its device."""


class BusyError(RemoteError):
    """The server is not accepting sessions (full, or shutting down)."""


class IdleError(RemoteError):
    """The server ended a session that sent nothing for its ``idle_timeout``."""


class ModelChangedError(LopInferError):
    """The model's weights changed after deploy and the session is ``strict``."""


class MissingDependencyError(LopInferError, ImportError):
    """An optional package is needed; the message says which extra installs it."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the optional package {package!r} is needed{what}: "
            f"pip install 'lopinfer[{extra}]'"
        )
        self.package = package
        self.extra = extra


#: The one table between the ``code`` of an ``Error`` message and the exception tree,
#: used both ways: a peer sends the code of the exception it caught, the other raises
#: the class of the code it received. Codes are wire values: never rename one.
REMOTE_CODES: dict[str, type[LopInferError]] = {
    "auth": AuthError,
    "version": ProtocolVersionError,
    "protocol_error": ProtocolError,
    "deploy": DeployError,
    "unknown_deployment": UnknownDeploymentError,
    "plan": PlanError,
    "profile": ProfileError,
    "busy": BusyError,
    "idle": IdleError,
    "remote": RemoteError,
}
_CODES = {cls: code for code, cls in REMOTE_CODES.items()}


def error_code(exc: BaseException | type[BaseException]) -> str:
    """The wire code of an exception (or class): its nearest class in the table, else
    ``"remote"`` (a subclass sends its parent's code; anything else is a RemoteError)."""
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        code = _CODES.get(base)
        if code is not None:
            return code
    return "remote"


def remote_error(code: str, message: str) -> LopInferError:
    """The exception a peer's ``Error(code, message)`` stands for (an unknown code, e.g.
    from a newer peer, is a :class:`RemoteError` that names it)."""
    cls = REMOTE_CODES.get(code)
    if cls is None:
        return RemoteError(f"{code}: {message}")
    return cls(message)
