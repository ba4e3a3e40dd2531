"""The exception tree of provisioner. Every error a user can meet is one of these.

    ProvisionerError
    ├── ProtocolError: MalformedPacket, LocalProtocolError
    ├── StoreError: NotFound, Conflict, StoreUnavailable
    ├── ImageError: ImageNotFound, ChecksumMismatch, ImageBuildError
    ├── TemplateError: TemplateNotFound, RenderError
    ├── PowerError, HandoffError
    ├── ValidationError
    ├── ConfigError
    └── AuthError: Unauthorized, Forbidden
    (InvalidTransition is a Conflict: the node is not in a state that allows the change)

Each class's docstring is its default message (the dnspython way), so `raise Conflict()` already
says something useful; pass a message to say more. Messages tell the operator what to do next.
They are translated once per surface: HTTP status in web/errors.py, exit code and a one-line
message in the CLI, log-count-and-drop in the server loops.
"""

from __future__ import annotations


class ProvisionerError(Exception):
    """Something went wrong in provisioner."""

    #: Process exit code when this error ends a CLI command.
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else (self.__doc__ or "").strip()
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ProtocolError(ProvisionerError):
    """A protocol exchange failed."""


class MalformedPacket(ProtocolError):
    """A packet from the network could not be decoded; it was dropped."""

    def __init__(self, message: str | None = None, *, reason: str = "malformed") -> None:
        super().__init__(message)
        #: A short, stable token for counters ("short_header", "option_overrun", ...).
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """Our own code asked a protocol core to do something the protocol does not allow."""


class ValidationError(ProvisionerError):
    """A value was refused; the message names the field and the rule."""

    exit_code = 2

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class StoreError(ProvisionerError):
    """The store could not complete the operation."""

    exit_code = 3


class NotFound(StoreError):
    """No such object; list what exists with the matching `list` command."""

    exit_code = 4


class Conflict(StoreError):
    """The object changed since it was read; read it again and retry."""

    exit_code = 5


class StoreUnavailable(StoreError):
    """The store did not answer in time; check that it is running (`provisioner store status`)."""

    exit_code = 6


class ImageError(ProvisionerError):
    """An image operation failed."""


class ImageNotFound(ImageError):
    """No such image or version; see `provisioner image list`."""

    exit_code = 4


class ChecksumMismatch(ImageError):
    """An image file does not match its manifest checksum; rebuild or re-import it."""


class ImageBuildError(ImageError):
    """The image build failed; the current version is still serving. See the build log."""


class TemplateError(ProvisionerError):
    """A template could not be rendered."""


class TemplateNotFound(TemplateError):
    """No such template in the site directory or the shipped templates."""


class RenderError(TemplateError):
    """A template failed to render for a node; fix the template or the node's variables."""


class PowerError(ProvisionerError):
    """A power operation failed; check the node's power settings and its BMC."""


class HandoffError(ProvisionerError):
    """The scheduler did not accept the node; the handoff stays queued and is retried."""


class ConfigError(ProvisionerError):
    """The configuration is invalid; fix the named setting in the file or environment."""

    exit_code = 2


class InvalidTransition(Conflict):
    """The node is not in a state that allows this change; see its state with `node show`."""

    def __init__(self, node: str, current: str, target: str, allowed: tuple[str, ...]) -> None:
        self.node, self.current, self.target, self.allowed = node, current, target, allowed
        targets = ", ".join(allowed) if allowed else "none (it is final)"
        super().__init__(f"node {node} is {current}: it cannot go to {target}; "
                         f"from {current} it can go to: {targets}")


class AuthError(ProvisionerError):
    """Authentication or authorisation failed."""

    exit_code = 7


class Unauthorized(AuthError):
    """Missing, wrong or expired token; create one with `provisioner token create`."""


class Forbidden(AuthError):
    """The token is valid but its role does not allow this; use a token with a higher role."""

    exit_code = 8
