"""A small Registry HTTP API v2 client: what the gateway needs to import images, no daemon.

It speaks to the outpost's CNCF distribution registry with the standard library only
(http.client), so importing an image needs neither Docker nor `requests`.

Layers are stored in the outpost registry UNCOMPRESSED, as OCI `layer.v1.tar` blobs whose
digest is the layer's diff_id: the LAN is fast and the link carries zstd anyway, and it makes
"does the outpost hold layer X" the same question as "does the registry hold blob diff_id".
With the config blob being the image config itself, `docker pull` then yields the same image
ID (config digest) as Earth's.

Blobs are stored once in distribution's storage, but the API is per repository: a blob pushed
to repo A answers 404 under repo B until it is linked there with `mount_blob`.

One `Registry` holds one keep-alive connection; it is not thread-safe (use one per thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import quote, urlencode, urlsplit

from ..errors import ConfigError, RegistryError
from ..home import OutpostSettings
from ..release.manifest import DIGEST, NAME, TAG, split_ref
from .auth import Credentials, authorization, connection_to

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

CHUNK = 1 << 20
# Bodies we read whole (manifests, tag lists, error JSON). distribution caps manifests at
# 4 MiB; anything far larger is not a registry talking, and must not fill our memory.
MAX_RESPONSE = 16 << 20
START_HINT = "start it with scripts/services start or pass --registry"

_LINK_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')

Progress = Callable[[int], None]


class _Disconnected(Exception):
    """The connection broke mid-request; `push_blob` may retry with a rewound source."""

    def __init__(self, cause: OSError | http.client.HTTPException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_repo(repo: str) -> str:
    if not NAME.match(repo) or len(repo) > 255:
        raise RegistryError(f"invalid repository name {repo!r}: use lowercase letters, digits, "
                            "and . _ - separators, with / between path components")
    return repo


def check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise RegistryError(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


def _check_reference(reference: str) -> str:
    if not (TAG.match(reference) or DIGEST.match(reference)):
        raise RegistryError(f"invalid manifest reference {reference!r}: expected a tag "
                            "or a sha256 digest")
    return reference


def image_ref_parts(ref: str) -> tuple[str, str]:
    """Split an image reference into the outpost registry's (repository, tag).

    "outpost-demo/app:1.0" -> ("outpost-demo/app", "1.0"); no tag means "latest". A leading
    registry host ("ghcr.io/x/app:1", "localhost:5000/app") is dropped: the outpost serves
    the image under its own registry, so `docker pull OUTPOST_REGISTRY/x/app:1` works.
    """
    if "@" in ref:
        raise RegistryError(f"image reference {ref!r} names a digest: name the image by tag "
                            "(name:tag); the outpost registry is addressed by tags")
    _host, name, found = split_ref(ref)
    tag = "latest" if found is None else found
    if name != name.lower():
        raise RegistryError(f"image reference {ref!r}: repository names must be lowercase")
    if not name or not NAME.match(name) or len(name) > 255:
        raise RegistryError(f"image reference {ref!r}: invalid repository name {name!r} "
                            "(lowercase letters, digits, . _ - separators, / between parts)")
    if not TAG.match(tag):
        raise RegistryError(f"image reference {ref!r}: invalid tag {tag!r} (letters, digits, "
                            "_ . -, at most 128, not starting with . or -)")
    return name, tag


def oci_manifest(config_digest: str, config_size: int,
                 layers: Sequence[tuple[str, int]]) -> bytes:
    """The canonical OCI image manifest of an image whose layers are uncompressed tars.

    Canonical (sorted keys, no whitespace) so Earth and the outpost build byte-identical
    manifests, hence the same manifest digest, from the same image.
    """
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": check_digest(config_digest),
                   "size": int(config_size)},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": check_digest(d), "size": int(s)}
                   for d, s in layers],
    }
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def _error_details(body: bytes) -> tuple[list[str], str]:
    """(codes, text) from the registry's error JSON, or a bit of the raw body."""
    try:
        errors = json.loads(body)["errors"]
        codes = [str(e.get("code", "UNKNOWN")) for e in errors]
        text = "; ".join(f"{e.get('code', 'UNKNOWN')}: {e.get('message', '')}".rstrip(": ")
                         for e in errors)
        return codes, text
    except (ValueError, KeyError, TypeError, AttributeError):
        snippet = body[:200].decode("utf-8", "replace").strip()
        return [], snippet


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


class Registry:
    """A Registry HTTP API v2 client bound to one registry and one keep-alive connection."""

    def __init__(self, address: str, *, timeout: float = 60, scheme: str = "http",
                 cafile: str | None = None, auth: Credentials | None = None) -> None:
        if "://" in address:
            scheme, _, address = address.partition("://")
        address = address.rstrip("/")
        if scheme not in ("http", "https"):
            raise RegistryError(f"registry {address!r}: unsupported scheme {scheme!r} "
                                "(use http:// or https://)")
        if not address or "/" in address or "?" in address:
            raise RegistryError(f"invalid registry address {address!r}: expected host:port")
        self.address = address
        self.scheme = scheme
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl.create_default_context(cafile=cafile)
        self._conn: http.client.HTTPConnection | None = None
        self._auth, self._authorization = auth, ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the API --------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise RegistryError, saying what to do, unless /v2/ answers 200."""
        resp = self._request("GET", "/v2/")
        if resp.status == 401:
            raise RegistryError(f"registry at {self.url} refused the credentials: check the "
                                "[earth] source_auth file" if self._auth else
                                f"registry at {self.url} requires authentication: at Earth, "
                                "name a credentials file in [earth] source_auth; run the "
                                "outpost's own registry without", status=401)
        if resp.status != 200:
            raise RegistryError(f"{self.url}/v2/ answered HTTP {resp.status}, not a Registry "
                                f"v2 API: {START_HINT} HOST:PORT", status=resp.status)

    def has_blob(self, repo: str, digest: str) -> bool:
        """Whether `repo` holds blob `digest` (a blob held only by other repos answers False)."""
        return self.blob_size(repo, digest) is not None

    def blob_size(self, repo: str, digest: str) -> int | None:
        """The size of blob `digest` in `repo`, or None when `repo` does not hold it.

        distribution does not check the sizes a manifest declares against its blobs (it
        stores a manifest with a wrong layer size, and pulls then fail), so a caller that
        builds manifests from sizes it was told can check them here first.
        """
        resp = self._request("HEAD", self._blob_path(repo, digest))
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._refused(f"HEAD blob {digest} in {repo}", resp)
        length = resp.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RegistryError(f"registry at {self.url} answered HEAD blob {digest} "
                                "without a Content-Length")
        return int(length)

    def fetch_blob(self, repo: str, digest: str, dest: Path, limit: int) -> None:
        """Blob `digest` of `repo` into the file `dest` (at most `limit` bytes), checked
        against its digest: a RegistryError when it is absent, bigger, or not what it is
        named (then `dest` is removed)."""
        resp = self._request("HEAD", self._blob_path(repo, digest))
        size = int(resp.headers.get("Content-Length") or 0) if resp.status == 200 else -1
        if size < 0 or size > limit:
            raise RegistryError(f"blob {digest[:19]} in {repo}: "
                                f"{'absent' if size < 0 else f'{size} bytes, over {limit}'}")
        sha = hashlib.sha256()
        try:
            with self.open_blob(repo, digest) as got, open(dest, "wb") as f:
                while chunk := got.read(CHUNK):
                    sha.update(chunk)
                    f.write(chunk)
        except RegistryError:
            dest.unlink(missing_ok=True)
            raise
        except (OSError, http.client.HTTPException) as e:
            dest.unlink(missing_ok=True)
            raise self._unreachable(e) from e
        if "sha256:" + sha.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise RegistryError(f"blob {digest[:19]} in {repo} is damaged: its content has "
                                "another digest")

    @contextlib.contextmanager
    def open_blob(self, repo: str, digest: str) -> Iterator[BinaryIO]:
        """Blob `digest` of `repo` as a stream (unchecked: the caller hashes what it reads).
        Follows the redirect a registry with blobs in object storage answers with."""
        path, conn = self._blob_path(repo, digest), self._connection()
        try:
            try:
                resp = self._open_stream(conn, path)
                location = resp.getheader("Location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    resp.read()
                    conn.close()
                    # object storage: a connection of its own, no registry credentials
                    conn = connection_to(location, self.timeout, self._ssl)
                    resp = _get(conn, _location_path(location), {})
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
            if resp.status != 200:
                raise RegistryError(f"GET blob {digest[:19]} in {repo}: HTTP {resp.status}",
                                    status=resp.status)
            yield cast(BinaryIO, resp)
        finally:
            conn.close()
            self._conn = None

    def _open_stream(self, conn: http.client.HTTPConnection, path: str
                     ) -> http.client.HTTPResponse:
        """A GET whose body the caller streams, answering one authentication challenge."""
        resp = _get(conn, path, self._headers())
        if resp.status == 401 and self._answer(resp.getheader("WWW-Authenticate")):
            resp.read()
            resp = _get(conn, path, self._headers())
        return resp

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Link blob `digest` from `from_repo` into `repo` without sending it; False if absent."""
        query = urlencode({"mount": check_digest(digest), "from": check_repo(from_repo)})
        resp = self._request("POST", f"/v2/{quote(check_repo(repo))}/blobs/uploads/?{query}")
        if resp.status == 201:
            return True
        if resp.status == 202:
            # The registry fell back to opening an ordinary upload session; cancel it so it
            # does not linger in storage until the upload purger runs (a week by default).
            self._cancel_upload(resp.headers.get("Location"))
            return False
        raise self._refused(f"mount of blob {digest} from {from_repo} into {repo}", resp)

    def push_blob(self, repo: str, digest: str, source: BinaryIO, size: int,
                  progress: Progress | None = None) -> bool:
        """Upload `size` bytes of `source` as blob `digest`; False if `repo` already holds it.

        Streams in CHUNK pieces (the blob may be gigabytes), reading exactly `size` bytes from
        the source's current position. The registry checks the digest: content that does not
        match is refused (RegistryError with code DIGEST_INVALID). `progress(sent)` is called
        with the running total of bytes sent (from 0 again if a broken connection forces the
        one retry).
        """
        check_repo(repo)
        check_digest(digest)
        if self.has_blob(repo, digest):
            return False
        # Two steps, PATCH with the bytes then PUT with the digest, rather than one monolithic
        # PUT: the PATCH answer carries an upload state that matches the stored bytes, and
        # only with it can a refused upload be cancelled. After a refused monolithic PUT the
        # registry answers DELETE with BLOB_UPLOAD_INVALID and keeps the bytes (possibly
        # gigabytes) in _uploads until its purger runs, a week later.
        # A broken connection mid-upload is retried once from the start, if we can rewind.
        start = source.tell() if source.seekable() else None
        for attempt in (0, 1):
            location = self._start_upload(repo)
            try:
                resp = self._send_stream("PATCH", _location_path(location), source, size,
                                         progress)
            except _Disconnected as e:
                # Cancelling works only if no bytes reached the registry (its upload state
                # must match); otherwise the purger reclaims the partial upload.
                self._cancel_upload(location)
                if attempt == 0 and start is not None:
                    source.seek(start)
                    continue
                raise self._unreachable(e.cause) from e.cause
            break
        staged = resp.headers.get("Location")
        if resp.status != 202 or not staged:
            self._cancel_upload(location)
            raise self._refused(f"upload of blob {digest} ({size} bytes) to {repo}", resp)
        split = urlsplit(staged)
        query = (split.query + "&" if split.query else "") + urlencode({"digest": digest})
        resp = self._request("PUT", f"{split.path}?{query}", body=b"")
        if resp.status != 201:
            self._cancel_upload(staged)
            raise self._refused(f"upload of blob {digest} ({size} bytes) to {repo}", resp)
        stored = resp.headers.get("Docker-Content-Digest")
        if stored is not None and stored != digest:
            raise RegistryError(f"registry at {self.url} stored blob {digest} as {stored}")
        return True

    def open_upload(self, repo: str, size: int) -> Upload:
        """Start a blob upload fed piece by piece (see Upload); one at a time per Registry."""
        return Upload(self, check_repo(repo), size)

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        path = f"/v2/{quote(check_repo(repo))}/manifests/{_check_reference(reference)}"
        resp = self._request("PUT", path, body=body, headers={"Content-Type": media_type})
        if resp.status != 201:
            raise self._refused(f"manifest {repo}:{reference}", resp)
        digest = sha256_digest(body)
        stored = resp.headers.get("Docker-Content-Digest")
        if stored is not None and stored != digest:
            # distribution stores OCI and schema2 manifests byte for byte; a different digest
            # means the image would not be the one we meant to publish.
            raise RegistryError(f"registry at {self.url} stored manifest {repo}:{reference} "
                                f"as {stored}, expected {digest}")
        return digest

    def get_manifest(self, repo: str, reference: str,
                     accept: Sequence[str] = MANIFEST_TYPES) -> tuple[str, bytes, str] | None:
        """(media type, body, digest) of a manifest, or None when the registry has none."""
        path = f"/v2/{quote(check_repo(repo))}/manifests/{_check_reference(reference)}"
        resp = self._request("GET", path, headers={"Accept": ", ".join(accept)})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._refused(f"GET manifest {repo}:{reference}", resp)
        digest = sha256_digest(resp.body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"registry at {self.url} answered manifest {reference} "
                                f"with content whose digest is {digest}")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if not media_type:
            try:
                media_type = str(json.loads(resp.body).get("mediaType", ""))
            except (ValueError, AttributeError):
                media_type = ""
        return media_type, resp.body, digest

    def tags(self, repo: str) -> list[str]:
        """The tags of `repo`, sorted ([] when the repository does not exist).

        distribution 2.8 answers all tags in one page, in storage order (it ignores `n`);
        other registries may page with `Link: <...>; rel="next"`, which is followed.
        """
        return self._listing(f"/v2/{quote(check_repo(repo))}/tags/list", "tags",
                             f"tag list of {repo}")

    def catalog(self) -> list[str]:
        """The repositories the registry holds, sorted (paged like tags)."""
        return self._listing("/v2/_catalog", "repositories", "catalog")

    def _listing(self, path: str, key: str, what: str) -> list[str]:
        found: list[str] = []
        for _ in range(10_000):  # pages; a bound so a looping Link header cannot hang us
            resp = self._request("GET", path)
            if resp.status == 404:
                return sorted(set(found))
            if resp.status != 200:
                raise self._refused(what, resp)
            try:
                found.extend(json.loads(resp.body).get(key) or [])
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"registry at {self.url} answered a {what} that is not "
                                    f"JSON: {e}") from e
            link = _LINK_NEXT_RE.search(resp.headers.get("Link") or "")
            if link is None:
                return sorted(set(found))
            path = _location_path(link.group(1))
        raise RegistryError(f"registry at {self.url}: {what} does not end")

    # -- plumbing -------------------------------------------------------------------------

    def _blob_path(self, repo: str, digest: str) -> str:
        return f"/v2/{quote(check_repo(repo))}/blobs/{check_digest(digest)}"

    def _start_upload(self, repo: str) -> str:
        resp = self._request("POST", f"/v2/{quote(repo)}/blobs/uploads/")
        location = resp.headers.get("Location")
        if resp.status != 202 or not location:
            raise self._refused(f"start of a blob upload to {repo}", resp)
        return location

    def _cancel_upload(self, location: str | None) -> None:
        # Best effort: an upload session we cannot cancel is only disk the purger reclaims.
        if location:
            with contextlib.suppress(RegistryError):
                self._request("DELETE", _location_path(location))

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ssl is not None:
                self._conn = http.client.HTTPSConnection(self.address, timeout=self.timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self.address, timeout=self.timeout)
        return self._conn

    def _request(self, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        """One request with a bytes body; any HTTP status is returned, not raised. A 401
        with credentials at hand is answered once (auth.py) and the request sent again."""
        resp = self._send(method, path, body, headers)
        if resp.status == 401 and self._answer(resp.headers.get("WWW-Authenticate")):
            resp = self._send(method, path, body, headers)
        return resp

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        auth = {"Authorization": self._authorization} if self._authorization else {}
        return {"User-Agent": "outpost", **auth, **(extra or {})}

    def _answer(self, challenge: str | None) -> bool:
        """Take the Authorization that answers `challenge`; False with nothing to answer."""
        if self._auth is None or not challenge:
            return False
        self._authorization = authorization(challenge, self._auth, f"registry at {self.url}",
                                            self._ssl, self.timeout)
        return True

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> Response:
        hdrs = self._headers(headers)
        for attempt in (0, 1):
            conn = self._connection()
            # http.client reopens a closed socket by itself; only a connection that served an
            # earlier request can have been closed by the registry while idle (keep-alive).
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=hdrs)
                return self._read(conn.getresponse())
            except (ConnectionError, http.client.BadStatusLine) as e:
                self.close()
                if attempt == 0 and reused:
                    continue
                raise self._unreachable(e) from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise self._unreachable(e) from e
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _send_stream(self, method: str, path: str, source: BinaryIO, size: int,
                     progress: Progress | None) -> Response:
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in self._headers().items():
                conn.putheader(name, value)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            sent = 0
            while sent < size:
                chunk = source.read(min(CHUNK, size - sent))
                if not chunk:
                    # The registry is still waiting for the rest: this connection is done.
                    self.close()
                    raise RegistryError(f"blob source ended after {sent} of {size} bytes; "
                                        "nothing was stored")
                try:
                    conn.send(chunk)
                except OSError:
                    # The registry may have answered early (and closed): its answer says more
                    # than our broken pipe does, so read it below.
                    break
                sent += len(chunk)
                if progress is not None:
                    progress(sent)
            return self._read(conn.getresponse())
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise _Disconnected(e) from e

    def _read(self, resp: http.client.HTTPResponse) -> Response:
        body = resp.read(MAX_RESPONSE + 1)
        if len(body) > MAX_RESPONSE:
            self.close()
            raise RegistryError(f"registry at {self.url} answered more than "
                                f"{MAX_RESPONSE >> 20} MiB where a small JSON was expected")
        if resp.will_close:
            self.close()
        return Response(resp.status, resp.msg, body)

    def _unreachable(self, err: OSError | http.client.HTTPException) -> RegistryError:
        if isinstance(err, ssl.SSLError):
            return RegistryError(f"TLS with registry at {self.url} failed ({_reason(err)}): "
                                 "check its certificate and the CA file")
        if isinstance(err, TimeoutError):
            return RegistryError(f"registry at {self.url} did not answer within "
                                 f"{self.timeout:g}s: is it overloaded or stuck?")
        return RegistryError(f"registry at {self.url} does not answer ({_reason(err)}): "
                             f"{START_HINT}")

    def _refused(self, what: str, resp: Response) -> RegistryError:
        codes, text = _error_details(resp.body)
        detail = f": {text}" if text else ""
        return RegistryError(f"registry at {self.url} refused {what}: HTTP {resp.status}"
                             f"{detail}", status=resp.status, codes=codes)


def outpost_registry(settings: OutpostSettings, home: Path, *,
                     timeout: float = 60) -> Registry:
    """The client of the outpost's own registry (`[outpost] registry`): HTTPS checked against
    `registry_ca` (a path relative to `home`, or absolute) when that is set, else plain HTTP
    as on loopback (docs/registry-tls.md). The one place that rule lives."""
    if not settings.registry:
        raise ConfigError("no outpost registry: set [outpost] registry in node.toml or pass "
                          "--registry HOST:PORT")
    ca = registry_ca_file(settings, home)
    if ca is None:
        return Registry(settings.registry, timeout=timeout)
    if settings.registry.startswith("http://"):
        raise ConfigError(f"[outpost] registry {settings.registry!r} says http:// but "
                          "registry_ca asks for TLS: drop one of them")
    return Registry(settings.registry, timeout=timeout, scheme="https", cafile=str(ca))


def registry_ca_file(settings: OutpostSettings, home: Path) -> Path | None:
    """The CA file the outpost registry's certificate is checked against (also what a
    command such as terraform needs as SSL_CERT_FILE), or None for plain HTTP."""
    if settings.registry_ca is None:
        return None
    ca = home / settings.registry_ca
    if not ca.is_file():
        raise ConfigError(f"[outpost] registry_ca: no CA file at {ca} (outpost-node init "
                          "--registry-tls writes tls/ca.crt)")
    return ca


class Upload:
    """A blob upload written as the data arrives, that becomes a blob only on `commit`.

    The bytes go in one PATCH while the caller is still checking them; until `commit` PUTs
    the digest they sit in the registry's upload area, where no manifest can name them and
    no pull can see them, and `cancel` drops them. That lets the gateway stream a layer
    into the registry while it is decompressed and verified, instead of staging it on disk.
    The PATCH holds the Registry's connection from creation to `close`.
    """

    def __init__(self, registry: Registry, repo: str, size: int) -> None:
        self.registry, self.repo, self.size, self.sent = registry, repo, size, 0
        self.location: str | None = registry._start_upload(repo)
        self.staged: str | None = None
        self._conn = registry._connection()
        try:
            self._conn.putrequest("PATCH", _location_path(self.location),
                                  skip_accept_encoding=True)
            for name, value in registry._headers().items():
                self._conn.putheader(name, value)
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.putheader("Content-Length", str(size))
            self._conn.endheaders()
        except (OSError, http.client.HTTPException) as e:
            raise self._broken(e) from e

    def write(self, data: bytes) -> None:
        if self.sent + len(data) > self.size:
            raise RegistryError(f"upload to {self.repo}: more than the {self.size} bytes "
                                "announced")
        try:
            self._conn.send(data)
        except OSError as e:
            raise self._broken(e) from e
        self.sent += len(data)

    def close(self) -> None:
        """The last byte was written: read the registry's answer to the PATCH."""
        if self.sent != self.size:
            self.registry.close()
            raise RegistryError(f"upload to {self.repo} ended after {self.sent} of "
                                f"{self.size} bytes")
        try:
            resp = self.registry._read(self._conn.getresponse())
        except (OSError, http.client.HTTPException) as e:
            raise self._broken(e) from e
        self.staged = resp.headers.get("Location")
        if resp.status != 202 or not self.staged:
            raise self.registry._refused(f"upload of {self.size} bytes to {self.repo}", resp)

    def commit(self, digest: str) -> None:
        """Make the uploaded bytes the blob `digest`; the registry checks the digest."""
        if self.staged is None:
            raise RegistryError(f"upload to {self.repo} was not finished before commit")
        split = urlsplit(self.staged)
        query = (split.query + "&" if split.query else "") + urlencode(
            {"digest": check_digest(digest)})
        resp = self.registry._request("PUT", f"{split.path}?{query}", body=b"")
        if resp.status != 201:
            self.cancel()
            raise self.registry._refused(f"upload of blob {digest} to {self.repo}", resp)
        self.staged = self.location = None

    def cancel(self) -> None:
        self.registry._cancel_upload(self.staged or self.location)
        self.staged = self.location = None

    def _broken(self, err: OSError | http.client.HTTPException) -> RegistryError:
        self.registry.close()
        return self.registry._unreachable(err)


def _get(conn: http.client.HTTPConnection, path: str,
         headers: dict[str, str]) -> http.client.HTTPResponse:
    conn.request("GET", path, headers={"User-Agent": "outpost", **headers})
    return conn.getresponse()


def _location_path(location: str) -> str:
    """Path and query of a Location/Link URL.

    distribution builds absolute Locations from the Host header we sent, so they name the
    registry we already talk to; we keep our own connection (and the address the operator
    configured) instead of following the host it spells.
    """
    split = urlsplit(location)
    return f"{split.path}?{split.query}" if split.query else split.path
