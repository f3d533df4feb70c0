"""Registry references as docker reads them: `[REGISTRY/]PATH[:TAG][@sha256:HEX]`.

The first path component names the registry when it has a `.` or a `:` or is `localhost` (docker's
rule); otherwise the image is on Docker Hub. A registry on loopback is spoken to over plain HTTP, as
docker does by default (its `insecure-registries` start with 127.0.0.0/8); every other keeps TLS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vmctl.errors import UsageError

DOCKER_HUB = "docker.io"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class RegistryRef:
    registry: str  # "127.0.0.1:5000", "[::1]:5000", "localhost", or DOCKER_HUB
    name: str  # the reference without tag and digest, as written ("127.0.0.1:5000/web", "redis")
    tag: str | None
    digest: str | None  # "sha256:..." when the reference pins one

    @property
    def loopback(self) -> bool:
        host = _host(self.registry)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def pinned(self, digest: str) -> str:
        """The reference of exactly this manifest (skopeo takes a tag or a digest, not both)."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        if self.digest:
            return self.pinned(self.digest)
        return f"{self.name}:{self.tag}" if self.tag else self.name


def parse(text: str) -> RegistryRef:
    """Split a reference (without `docker://`); UsageError for a digest that is not `sha256:` + 64 hex digits."""
    rest, at, digest = text.partition("@")
    if at and not DIGEST_RE.match(digest):
        raise UsageError(f"image reference `{text}` has an invalid digest `{digest}`",
                         hint="write NAME@sha256: followed by the 64 lowercase hex digits of the manifest digest")
    first, slash, _ = rest.partition("/")
    has_registry = bool(slash) and ("." in first or ":" in first or first == "localhost")
    head, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:  # the colon is the registry's port, not a tag
        head, tag = rest, ""
    return RegistryRef(registry=first if has_registry else DOCKER_HUB, name=head, tag=tag or None,
                       digest=digest or None)


def _host(registry: str) -> str:
    if registry.startswith("["):  # [::1]:5000
        return registry[1:].partition("]")[0]
    return registry.rpartition(":")[0] if ":" in registry else registry
