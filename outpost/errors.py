"""The one exception tree of Outpost.

    OutpostError                  anything Outpost raises on purpose
    ├── BundleError               a peer sent us something bad: quarantine it, keep running
    │   ├── MalformedBundle       not a bundle, or a header that breaks the format
    │   ├── TruncatedBundle       the file ends before the bundle does
    │   ├── LimitExceeded         header too large or too deep, zstd bomb, absurd fragment
    │   ├── UnknownKey            signed by a node we do not trust
    │   ├── BadSignature          the signature does not match the header
    │   ├── IntegrityError        payload length or sha256 differs from the signed header
    │   ├── ExpiredBundle         its lifetime ended before it reached us
    │   ├── MisaddressedBundle    meant for another node
    │   ├── NotRegularFile        a FIFO, device, directory or symlink where a bundle file
    │   │                         should be (never opened in a way that could block)
    │   └── RefusedContent        arrived intact as signed, but what it says is refused
    │                             (history rewrite, a layer that is not its diff_id): the
    │                             receiver acks it so the sender stops, and reports it
    ├── ApplyFailed               a release did not come up at the outpost (a service that
    │   │                         does not start or is unhealthy, a command that failed):
    │   │                         rolled back or failed, recorded and reported to Earth
    │   └── ImagesMissing         an image the apply needs is not in the registry: the
    │                             outpost asks Earth for it and retries when it arrives
    └── LocalError                our own fault: configuration, state, disk
        ├── ConfigError           the home, node.toml or outpost.toml is missing or wrong
        ├── StateError            the SQLite state cannot be read or written
        ├── GitError              a git command failed on our side
        ├── DockerError           the Docker daemon is missing or refused a request
        └── RegistryError         the registry is missing or refused a request

Every BundleError carries a short machine-readable `reason` (used in quarantine records and
`bundles ls`) next to its human message. Foreign exceptions (msgpack, zstandard, nacl,
sqlite3, OSError) are translated into this tree where they are caught, at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence


class OutpostError(Exception):
    """Base of every error Outpost raises on purpose."""


class BundleError(OutpostError):
    """A peer's bundle is bad. The node quarantines it with `reason` and goes on."""

    reason = "bad-bundle"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedBundle(BundleError):
    reason = "malformed"


class TruncatedBundle(BundleError):
    reason = "truncated"


class LimitExceeded(BundleError):
    reason = "limit-exceeded"


class UnknownKey(BundleError):
    reason = "unknown-key"


class BadSignature(BundleError):
    reason = "bad-signature"


class IntegrityError(BundleError):
    reason = "integrity"


class ExpiredBundle(BundleError):
    reason = "expired"


class MisaddressedBundle(BundleError):
    reason = "misaddressed"


class NotRegularFile(BundleError):
    reason = "not-a-file"


class RefusedContent(BundleError):
    """The bundle is intact and correctly signed, but its content is refused for good.

    Resending cannot help, so unlike other BundleErrors it is acknowledged (and reported to
    the sender) as well as quarantined.
    """

    reason = "refused"


class ApplyFailed(OutpostError):
    """A release did not come up: `service` (if one is to blame) and the reason."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class ImagesMissing(ApplyFailed):
    """The apply needs images the outpost registry does not hold (`refs`, name:tag)."""

    def __init__(self, refs: Sequence[str], message: str = "") -> None:
        refs = sorted(set(refs))
        super().__init__(message or "not in the outpost registry: " + ", ".join(refs))
        self.refs = refs


class LocalError(OutpostError):
    """Our own fault (configuration, state, disk): not the peer's."""


class ConfigError(LocalError):
    """The node home or its configuration is missing or invalid."""


class StateError(LocalError):
    """The node's SQLite state cannot be read or written."""


class GitError(LocalError):
    """A git command failed for a reason of ours (not a peer's bundle)."""


class DockerError(LocalError):
    """The Docker daemon is not reachable or refused a request."""


class RegistryError(LocalError):
    """The outpost registry cannot be reached, or it refused a request (with its reason).

    `status` is the HTTP status when the registry answered, `codes` the error codes of its
    error JSON (e.g. DIGEST_INVALID, BLOB_UNKNOWN, MANIFEST_BLOB_UNKNOWN).
    """

    def __init__(self, message: str, *, status: int | None = None,
                 codes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = tuple(codes)
