"""Which images a failed command could not find, read from its output (pure).

A `command` applier (`docker compose up`, `terraform apply` with the kreuzwerker/docker
provider, a script calling `docker run`) fails with the Docker daemon's words when an image
is not in the outpost registry. These are the forms seen from the docker CLI, the Docker
Engine API and the Terraform docker provider, e.g.:

    Unable to find image '127.0.0.1:5000/app/web:1.2' locally
    Error response from daemon: manifest for 127.0.0.1:5000/app/web:1.2 not found: manifest unknown
    Error: Unable to read Docker image into resource: unable to pull image
           127.0.0.1:5000/app/web:1.2: ...
    Error: Unable to find or pull image 127.0.0.1:5000/app/web:1.2
    pull access denied for 127.0.0.1:5000/app/web, repository does not exist
    No such image: 127.0.0.1:5000/app/web:1.2

Each reference found is returned as Earth names it (`app/web:1.2`): without the registry
host, with a tag (`latest` when none is given). A reference by digest names no tag, so it
cannot be asked for, and is left out.
"""

from __future__ import annotations

import re

from ..release.manifest import IMAGE_REF, split_ref

_QUOTES = "'\"`,.;:()[]"
_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"unable to find image '(?P<ref>[^']+)'",
    r"manifest for (?P<ref>\S+) not found",
    r"unable to (?:find or )?pull image (?P<ref>\S+)",
    r"error pulling image (?P<ref>\S+)",
    r"pull access denied for (?P<ref>[^\s,]+)",
    r"no such image:? (?P<ref>\S+)",
    r"repository (?P<ref>\S+) not found",
)]


def missing_images(output: str) -> list[str]:
    """The image references `output` says could not be found or pulled, sorted."""
    found = set()
    for pattern in _PATTERNS:
        for m in pattern.finditer(output):
            ref = normalise(m.group("ref"))
            if ref is not None:
                found.add(ref)
    return sorted(found)


def normalise(raw: str) -> str | None:
    """`HOST:PORT/name:tag` -> `name:tag`; None for what is not a tag reference."""
    ref = raw.strip(_QUOTES)
    if "@" in ref:
        return None
    _host, name, tag = split_ref(ref)
    ref = f"{name}:{tag or 'latest'}"
    return ref if IMAGE_REF.match(ref) else None
