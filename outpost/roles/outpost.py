"""The outpost: takes releases in (config into the git mirror, images into the registry),
applies each once it is ready (outpost/apply), reports outcomes home, and asks Earth for
what it lacks: everything (sync) at start and on an interval, single images when an apply
finds one missing."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack

from ..apply.loop import ApplyLoop
from ..codec import EXPEDITED, Header, read_payload
from ..errors import BundleError, ConfigError, MalformedBundle, RegistryError
from ..gateway.importer import Gateway
from ..gateway.providers import install_provider
from ..gateway.registry import outpost_registry
from ..images.parts import ImagePayload
from ..node.context import Node, log
from ..node.handlers import Handler, stream_to_part
from ..node.sender import Sender
from ..providers.mirror import OutpostMirror
from ..providers.package import ProviderPayload
from ..release import git
from ..release.manifest import IMAGE_REF, Release
from ..store.applies import WAITING as WAITING_IMAGES
from ..store.applies import ApplyRow, ApplyStore
from ..store.releases import READY, REFUSED, WAITING, ReleaseStore
from . import Call, Role


class Outpost(Role):
    def __init__(self, node: Node, sender: Sender, registry: str | None = None,
                 docker: str | None = None) -> None:
        self.node, self.sender = node, sender
        self.store = ReleaseStore(node.state)
        self.mirror = node.home.mirror
        git.init_mirror(self.mirror)
        settings = replace(node.home.outpost, registry=registry or node.home.outpost.registry,
                           docker=docker or node.home.outpost.docker)
        self.gateway = (Gateway(outpost_registry(settings, node.home.path), self.store)
                        if settings.registry else None)
        self.sync_interval = settings.sync_interval
        self.sync_on_start = settings.sync_on_start
        self._next_sync = 0.0
        self.applies = ApplyLoop(node, settings, self.report_apply, self.request_images)
        self.wait_for_layers = settings.answer_wait(node.home.settings.rtt)
        self.providers = OutpostMirror(node.home.provider_mirror)

    def handlers(self) -> dict[str, Handler]:
        return {**super().handlers(), "release": Call(self.on_release),
                "image": Call(self.on_image), "provider": Call(self.on_provider),
                "image-unavailable": Call(self.on_unavailable)}

    # timers
    def bind(self, wake: Callable[[], None]) -> None:
        self.applies.wake = wake

    def on_start(self) -> None:
        now = self.node.clock()
        self._next_sync = now if self.sync_on_start else now + self.sync_interval
        self._check_registry()
        self.applies.start()

    def _check_registry(self) -> None:
        """Say at start-up, not when the first image arrives, that images cannot go in."""
        if self.gateway is None:
            log.warning("no registry configured ([outpost] registry in node.toml, or start "
                        "--registry HOST:PORT): image bundles will wait in the inbox")
            return
        try:
            self.gateway.registry.ping()
        except RegistryError as e:
            log.warning("the registry does not answer yet (%s); image bundles wait until it "
                        "does", e)

    def on_stop(self) -> None:
        self.applies.stop()

    def tick(self, now: float) -> None:
        if self.sync_interval > 0 and now >= self._next_sync and self.node.peers():
            self._next_sync = now + self.sync_interval
            for peer in self.node.peers():
                self.send_sync(peer)
        self.ask_for_incomplete(now)
        self.applies.poll()

    def send_sync(self, peer: str) -> str:
        """Tell `peer` what we hold; it answers with whatever we lack."""
        layers = self.gateway.present_layers() if self.gateway else self.store.layers()
        doc = {"commit": git.mirror_head(self.mirror), "layers": layers,
               "images": sorted({i["image_id"] for i in self.store.images()}),
               "providers": self.providers.keys()}
        data: bytes = msgpack.packb(doc)
        msg = self.sender.submit(peer, "sync", io.BytesIO(data), priority=EXPEDITED,
                                 lifetime=max(self.sync_interval, 3600.0))
        log.info("sync sent to %s: config %s, %d layers", peer,
                 (doc["commit"] or "none")[:12], len(layers))
        return msg.id

    # releases
    def on_release(self, header: Header, path: Path) -> None:
        release = Release.from_meta(header.meta.get("release"))
        if header.payload.raw_length:
            staged = self.node.home.staging / f"{header.id}.bundle"
            try:
                stream_to_part(self.node, path, staged)
                old, new = git.apply_bundle(self.mirror, staged, release.commit)
            finally:
                staged.unlink(missing_ok=True)
            log.info("config mirror %s -> %s", (old or "empty")[:12], new[:12])
        elif git.mirror_head(self.mirror) != release.commit:
            # No bundle means Earth believes we hold the commit already; a sync will mend it.
            read_payload(path, self.node.state.keyring(), self.node.limits, lambda _b: None)
        self.store.set_release(release.commit, {**release.to_meta(), "src": header.src},
                               WAITING, "", self.node.clock())
        self.check_ready()

    def check_ready(self) -> None:
        held = {i["image_id"] for i in self.store.images()}
        head = git.mirror_head(self.mirror)
        for rel in self.store.releases():
            if rel["state"] != WAITING:
                continue
            release = Release.from_meta(rel["meta"])
            lacking = [i.ref for i in release.images if i.image_id not in held] + [
                f"provider {p}" for p in release.providers if not self.providers.has(p)]
            if not lacking and head == release.commit:
                self.store.set_release(release.commit, rel["meta"], READY, "",
                                       self.node.clock())
                log.info("release %s is ready: config %s, %d image(s) and %d provider(s) "
                         "present", release.id, release.commit[:12], len(release.images),
                         len(release.providers))
            elif lacking:
                self.store.set_release(release.commit, rel["meta"], WAITING,
                                       "lacks " + ", ".join(lacking), self.node.clock())
        self.applies.poll()

    # images
    def on_image(self, header: Header, path: Path) -> None:
        if self.gateway is None:
            raise ConfigError("an image arrived but no registry is configured: start the node "
                              "with --registry HOST:PORT or set [outpost] registry")
        payload = ImagePayload.from_meta(header.meta, header.payload.raw_length)
        staging = self.node.home.staging / header.id
        missing = self.gateway.import_bundle(
            payload, lambda sink: read_payload(path, self.node.state.keyring(),
                                               self.node.limits, sink), staging, header.src)
        if missing and self.gateway.failed_deltas:
            release = header.meta.get("release")
            self._ask(header.src, [payload.facts.ref], self.gateway.present_layers(),
                      release if isinstance(release, str) else None,
                      full=self.gateway.failed_deltas)
            self.store.pending_requested(payload.facts.image_id, payload.facts.ref,
                                         self.node.clock())
        if missing:
            log.warning("image %s lacks %d layer(s) the registry does not hold yet; it waits "
                        "for them", payload.facts.ref, len(missing))
            self.report(header.src, "image-incomplete", header.meta.get("release"),
                        ref=payload.facts.ref, missing=missing)
            return
        log.info("image %s imported: %s", payload.facts.ref, payload.facts.image_id[:19])
        refs = [payload.facts.ref]
        for facts in self.gateway.complete_pending():
            log.info("image %s complete: its last layers came with %s", facts.ref, refs[0])
            refs.append(facts.ref)
        self.check_ready()
        self.applies.images_arrived(refs)

    # Terraform providers
    def on_provider(self, header: Header, path: Path) -> None:
        payload = ProviderPayload.from_meta(header.meta, header.payload.raw_length)
        installed = install_provider(
            self.providers, payload,
            lambda sink: read_payload(path, self.node.state.keyring(), self.node.limits, sink),
            self.node.home.staging / header.id)
        if installed:
            log.info("provider %s installed (%s)", payload.provider, payload.h1)
        self.check_ready()

    def ask_for_incomplete(self, now: float) -> None:
        """An image still waiting for layers long after it came: ask Earth for it (the
        bundle meant to bring them was lost, expired or never sent)."""
        layers: list[str] | None = None
        for row in self.store.pending_images():
            if row["requested"] is not None or now < row["since"] + self.wait_for_layers:
                continue
            if layers is None:
                layers = self.gateway.present_layers() if self.gateway else []
            ref = row["facts"]["ref"]
            for peer in self._earth_of_peer(row["src"]):
                self._ask(peer, [ref], layers, None)
            self.store.pending_requested(row["image_id"], ref, now)

    # telling Earth
    def on_refused(self, header: Header, error: BundleError) -> None:
        event = {"release": "release-refused", "image": "image-refused",
                 "provider": "provider-refused"}.get(header.kind)
        if event is None:
            return
        release = header.meta.get("release")
        if header.kind == "release":
            try:
                rel = Release.from_meta(release)
                self.store.set_release(rel.commit, rel.to_meta(), REFUSED, str(error),
                                       self.node.clock())
                release = rel.commit
            except BundleError:
                release = None
        self.report(header.src, event, release if isinstance(release, str) else None,
                    reason=error.reason, error=str(error), head=git.mirror_head(self.mirror))

    def report(self, peer: str, event: str, release: str | None, **detail: Any) -> None:
        self.sender.submit(peer, "report", None, priority=EXPEDITED,
                           meta={"event": event, "release": release, **detail})

    # applies
    def report_apply(self, row: ApplyRow) -> None:
        """Tell Earth how an apply went (or that it waits for images)."""
        current = ApplyStore(self.node.state).current()
        detail = {"apply": row.id, "trigger": row.trigger, "applier": row.applier,
                  "running": current.commit if current else None,
                  "durations": row.durations, "service": row.service, "reason": row.reason,
                  "changes": row.plan.get("terraform")}
        if row.state == WAITING_IMAGES:
            detail["wanted"] = row.wanted
        for peer in self._earth_of(row.commit_id):
            self.report(peer, row.state, row.commit_id, **detail)

    def request_images(self, row: ApplyRow) -> None:
        """Ask Earth for the images an apply lacks, saying which layers we hold."""
        layers = self.gateway.present_layers() if self.gateway else []
        for peer in self._earth_of(row.commit_id):
            self._ask(peer, row.wanted, layers, row.commit_id)
            log.info("apply #%d waits for them (request %d)", row.id, row.requests + 1)

    def _ask(self, peer: str, refs: list[str], layers: list[str], release: str | None, *,
             full: list[str] | None = None) -> None:
        """Ask for images, saying which layers we hold (and which to send whole)."""
        doc = {"refs": refs, "layers": layers, "release": release, "full": full or []}
        data: bytes = msgpack.packb(doc)
        self.sender.submit(peer, "image-request", io.BytesIO(data), priority=EXPEDITED,
                           meta={"release": release, "refs": refs})
        log.info("asked %s for %s", peer, ", ".join(refs))

    def on_unavailable(self, header: Header, path: Path) -> None:
        read_payload(path, self.node.state.keyring(), self.node.limits, lambda _b: None)
        refs = header.meta.get("refs")
        if not isinstance(refs, list) or not all(
                isinstance(r, str) and IMAGE_REF.match(r) for r in refs):
            raise MalformedBundle("image-unavailable needs a list of image refs",
                                  reason="bad-meta")
        reason = str(header.meta.get("reason", "Earth does not have it"))[:500]
        log.warning("%s does not have %s: %s", header.src, ", ".join(refs), reason)
        self.applies.unavailable(refs, reason)

    def _earth_of(self, commit: str) -> list[str]:
        """Where a release came from (all peers when that is not known)."""
        found = self.store.release(commit)
        return self._earth_of_peer(found["meta"].get("src") if found else None)

    def _earth_of_peer(self, src: str | None) -> list[str]:
        peers = self.node.peers()
        return [src] if src in peers else peers
