"""Earth: the authoritative side. Publishes releases, answers syncs, tracks holdings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codec import BULK, EXPEDITED, Header, PartWriter
from ..codec.files import Fill
from ..errors import ConfigError, GitError, MalformedBundle
from ..fleet import DONE, HALTED, ROLLING, advance
from ..fsutil import waiting_lock
from ..images.delta import pick_bases
from ..images.pack import write_image
from ..node.context import Node, log
from ..node.handlers import Handler
from ..node.sender import Sender, custody_start, peers_text
from ..progress import Meter, prefixed, silent
from ..providers.lockfile import parse_lock
from ..providers.mirror import find_package, standard_mirrors, write_package
from ..providers.package import Provider, safe_file_name
from ..release import git
from ..release.config import ReleaseConfig, parse_release_config
from ..release.manifest import COMMIT as COMMIT_RE
from ..release.manifest import DIGEST, IMAGE_REF, ImageFacts, Release
from ..sources import ImageSource, open_source
from ..store.releases import COMMIT, IMAGE, LAYER, OUTCOMES, PROVIDER, ReleaseStore
from ..store.state import SENDING, Message
from . import Call, Role, read_control

WARNING_EVENTS = ("release-refused", "image-refused", "provider-refused", "image-incomplete",
                  "rolled-back", "failed")


MAX_SHARED = 200  # peers one shared bundle names (its header lists them all)


@dataclass(frozen=True)
class Need:
    """A message a publish sends: the same (`key`) for every outpost that lacks the same
    thing; `send` packs it once for the outposts named and takes it into their custody."""

    key: tuple[Any, ...]
    what: str
    send: Callable[[list[str]], list[Message]]


@dataclass
class Sent:
    """What one publish sent one outpost."""

    peer: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "messages": self.messages,
                "bytes": sum(m["size"] for m in self.messages)}


class Earth(Role):
    def __init__(self, node: Node, sender: Sender, meter: Meter = silent) -> None:
        self.node, self.sender, self.meter = node, sender, meter
        self.store = ReleaseStore(node.state)
        self.repo = node.home.config_repo
        self._source: ImageSource | None = None
        self.platform = node.home.earth.terraform_platform

    def handlers(self) -> dict[str, Handler]:
        return {**super().handlers(), "sync": Call(self.on_sync),
                "report": Call(self.on_report), "image-request": Call(self.on_image_request)}

    @property
    def source(self) -> ImageSource:
        """Where images come from (sources/), opened when first needed: a release of
        Terraform and config alone needs no Docker daemon nor registry at Earth."""
        if self._source is None:
            self._source = open_source(self.node.home)
        return self._source

    # publishing
    def current(self) -> Release:
        """The release at the head of the config repo, its images resolved at the source."""
        commit = git.head(self.repo)
        cfg = parse_release_config(git.show(self.repo, commit, "outpost.toml"),
                                   f"outpost.toml at {commit[:12]}")
        providers = self._providers(commit, cfg)
        images = [self.source.facts(ref) for ref in cfg.images]
        return Release(commit, images, providers)

    def _providers(self, commit: str, cfg: ReleaseConfig) -> list[Provider]:
        """The providers the release's lock file pins, for the outposts' platform."""
        if cfg.lock_file is None:
            return []
        try:
            text = git.show(self.repo, commit, cfg.lock_file)
        except GitError:
            raise ConfigError(f"the terraform applier needs {cfg.lock_file} in the config repo "
                              f"(commit {commit[:12]} has none): run `terraform providers "
                              f"lock -platform={self.platform}` and commit it") from None
        locked = parse_lock(text, f"{cfg.lock_file} at {commit[:12]}")
        return [Provider(p.source, p.version, self.platform, p.hashes) for p in locked]

    def publish(self, peers: list[str] | None = None, *, via_link: bool = True,
                groups: Sequence[str] = (), channels: Sequence[str] = ()) -> list[Sent]:
        """Send the release at the head of the config repo. To the outposts named (by
        name, group or channel) at once; otherwise as a rollout through the channels: the
        first channel's outposts now, each next channel's once the one before applied it
        (on_report). Each outpost gets only what it lacks."""
        release = self.current()
        if peers or groups or channels:
            targets = self.node.home.fleet.select(self.node.peers(), names=peers or (),
                                                  groups=groups, channels=channels)
            return self._publish_all(targets, release, via_link)
        stages = self.node.home.fleet.stages(self.node.peers())
        self.store.start_rollout(release.commit, release.to_meta(), self.node.clock())
        if sum(bool(members) for _c, members in stages) > 1:
            log.info("rollout of %s: %s", release.id, "; then ".join(
                f"{channel} ({len(members)})" for channel, members in stages if members))
        sent = self._publish_all(stages[0][1], release, via_link)
        return sent + self._advance_rollout(release.commit)

    def _advance_rollout(self, commit: str | None) -> list[Sent]:
        """Move the rollout of `commit` on as far as its outposts' reports allow: send the
        release to each next channel whose turn came, or halt it on a failure."""
        row = self.store.rollout(commit) if commit else None
        if row is None or row["state"] != ROLLING:
            return []
        stages = self.node.home.fleet.stages(self.node.peers())
        release = Release.from_meta(row["release"])
        stage, sent = int(row["stage"]), []
        for _ in stages:
            step = advance(stages, stage, lambda p: self.store.outcome(p, release.commit))
            if (step.stage, step.state) == (stage, ROLLING):
                break
            self.store.set_rollout(release.commit, step.stage, step.state, step.why,
                                   self.node.clock())
            stage = step.stage
            if step.state == HALTED:
                log.warning("rollout of %s halted: %s", release.id, step.why)
                break
            if step.send:
                log.info("rollout of %s moves on to %s: %s", release.id,
                         stages[step.stage][0], ", ".join(step.send))
                sent += self._publish_all(step.send, release, True)
            if step.state == DONE:
                break
        return sent

    def release_for(self, peer: str) -> Release | None:
        """The release `peer` should run: with one channel, the head of the config repo;
        with several, the newest release a rollout brought as far as the peer's channel
        (None: none yet)."""
        fleet = self.node.home.fleet
        if len(fleet.channels) == 1:
            return self.current()
        row = self.store.reached(fleet, peer)
        return None if row is None else Release.from_meta(row["release"])

    def _publish_to(self, peer: str, release: Release, via_link: bool) -> Sent:
        return self._publish_all([peer], release, via_link)[0]

    def _publish_all(self, peers: list[str], release: Release, via_link: bool) -> list[Sent]:
        """Send each of `peers` what it lacks of `release`; what several lack alike goes as
        one shared bundle (packed once, Sender.submit_to). One publisher at a time per home
        (the node answering a sync, `outpost-node publish`): what one is still packing is
        in custody, hence pending, for the next, and no other trims the layer cache while
        it reads. The outboxes are written after the lock is let go."""
        with self.sender.deferring_fill(), waiting_lock(
                self.node.home.path / "publish.lock",
                lambda: log.info("another publish is at work; waiting for it")):
            try:
                return self._publish_locked(peers, release, via_link)
            finally:
                if self._source is not None:
                    self._trim(self._source)

    def _trim(self, source: ImageSource) -> None:
        freed = source.cache.trim()
        if freed:
            log.info("layer cache over its bound (%s): %d bytes of the least recently used "
                     "layers dropped", self.node.home.earth.layer_cache, freed)

    def _publish_locked(self, peers: list[str], release: Release, via_link: bool
                        ) -> list[Sent]:
        sent = {peer: Sent(peer) for peer in peers}
        alike: dict[tuple[Any, ...], tuple[Need, list[str]]] = {}
        pending = self.pending_all()
        for peer in peers:
            for need in self._needs(peer, release, pending.get(peer, {}), via_link):
                alike.setdefault(need.key, (need, []))[1].append(peer)
        for need, members in alike.values():
            for at in range(0, len(members), MAX_SHARED):
                for msg in need.send(members[at:at + MAX_SHARED]):
                    sent[msg.peer].messages.append(_describe(msg, need.what))
        for peer in peers:
            log.info("published %s to %s: %d message(s)", release.id, peer,
                     len(sent[peer].messages))
        return [sent[peer] for peer in peers]

    def _needs(self, peer: str, release: Release, pending: dict[str, set[str]],
               via_link: bool) -> list[Need]:
        """The messages `peer` needs of `release`: what it neither holds nor has coming."""
        needs = []
        base = self.store.commit_of(peer)
        if release.commit != base and release.commit not in pending.get(COMMIT, ()):
            needs.append(self._config_need(peer, release, base, via_link))
        layers = self.store.holding(peer, LAYER) | pending.get(LAYER, set())
        images = self.store.holding(peer, IMAGE) | pending.get(IMAGE, set())
        for facts in release.images:
            if facts.image_id not in images:
                needs.append(self._image_need(peer, facts, layers, release.commit, via_link))
                images.add(facts.image_id)
        providers = self.store.holding(peer, PROVIDER) | pending.get(PROVIDER, set())
        needs += [self._provider_need(provider, release.commit, via_link)
                  for provider in release.providers if provider.key not in providers]
        return needs

    def _provider_need(self, provider: Provider, release: str, via_link: bool) -> Need:
        def send(peers: list[str]) -> list[Message]:
            mirrors = self._provider_mirrors()
            package = find_package(mirrors, provider)
            if package is None:
                where = ", ".join(map(str, mirrors)) or "none found"
                raise ConfigError(f"{provider} is not in Earth's provider mirror ({where}): "
                                  "fetch it with `terraform providers mirror -platform="
                                  f"{self.platform} DIR` where there is internet, and set "
                                  "[earth] terraform_mirror")

            def fill(w: PartWriter) -> dict[str, Any]:
                return write_package(package, provider, w).to_meta()
            return self.sender.submit_to(
                peers, "provider", fill=fill, meta={"release": release}, priority=BULK,
                via_link=via_link,
                progress=self.meter(f"{peers_text(peers)}: packing provider {provider}"),
                custody={"holds": {PROVIDER: [provider.key]}, "release": release})
        return Need(("provider", provider.key, release), f"provider {provider}", send)

    def _provider_mirrors(self) -> list[Path]:
        """[earth] terraform_mirror, or Terraform's own plugin folders (looked up only when
        a provider is sent, not every time a node or command starts)."""
        mirrors = self.node.home.earth.terraform_mirror
        if mirrors is None:
            return standard_mirrors()
        return [self.node.home.path / m for m in mirrors.split(":") if m]

    def _image_need(self, peer: str, facts: ImageFacts, layers: set[str],
                    release: str | None, via_link: bool = True,
                    full: AbstractSet[str] = frozenset()) -> Need:
        """An image bundle with the layers not in `layers` (which then holds them all),
        each as a delta against its earlier version where the outpost holds that (except
        the layers in `full`)."""
        wanted = [d for d in dict.fromkeys(facts.diff_ids) if d not in layers]
        earlier, bases = self._delta_bases(peer, facts, full)
        layers |= set(facts.diff_ids)
        held = set(facts.diff_ids) - set(wanted)

        def send(peers: list[str]) -> list[Message]:
            return self.sender.submit_to(
                peers, "image", fill=self._image_fill(peers_text(peers), facts, held, bases,
                                                      earlier),
                meta={"release": release}, priority=BULK, via_link=via_link,
                custody={"holds": {LAYER: wanted, IMAGE: [facts.image_id]},
                         "release": release})
        deltas = f", {len(bases)} as deltas" if bases else ""
        return Need(("image", facts.image_id, tuple(wanted), tuple(sorted(bases.items())),
                     release), f"{facts.ref}: {len(wanted)} of {len(facts.diff_ids)} "
                               f"layers{deltas}", send)

    def _delta_bases(self, peer: str, facts: ImageFacts, full: AbstractSet[str]
                     ) -> tuple[ImageFacts | None, dict[str, str]]:
        """The newest image of the same name the outpost holds (as the source still knows
        it), and which of its layers each new layer is sent against. Only layers the outpost
        acknowledged count as bases: one still on its way might come after the delta."""
        earlier = self.source.earlier(facts, self.store.holding(peer, IMAGE))
        if earlier is None:
            return None, {}
        bases = pick_bases(facts.diff_ids, earlier.diff_ids, self.store.holding(peer, LAYER),
                           full)
        log.debug("%s to %s: %d layer(s) as deltas against %s", facts.ref, peer, len(bases),
                  earlier.ref)
        return earlier, bases

    def _config_need(self, peer: str, release: Release, base: str | None,
                     via_link: bool) -> Need:
        if base is not None and git.has_commit(self.repo, base) and not git.is_ancestor(
                self.repo, base, release.commit):
            log.warning("%s holds %s, which %s does not descend from: the outpost will "
                        "refuse this rewrite of history", peer, base[:12], release.id)

        def send(peers: list[str]) -> list[Message]:
            with tempfile.TemporaryDirectory(dir=self.node.home.spool) as tmp:
                bundle = Path(tmp) / "config.bundle"
                has = git.create_bundle(self.repo, bundle, base)
                with open(bundle if has else os.devnull, "rb") as src:
                    return self.sender.submit_to(
                        peers, "release", src,
                        meta={"release": release.to_meta(), "base": base}, via_link=via_link,
                        custody={"holds": {COMMIT: [release.commit]},
                                 "release": release.commit})
        return Need(("release", release.commit, base),
                    f"release {release.id} (config from {(base or 'the start')[:12]})", send)

    def _image_fill(self, who: str, facts: ImageFacts, held: set[str],
                    bases: dict[str, str], earlier: ImageFacts | None) -> Fill:
        def fill(w: PartWriter) -> dict[str, Any]:
            meter = prefixed(self.meter, f"{who}: ")
            source = self.source
            files = source.files(facts, set(facts.diff_ids) - held, meter)
            base_files = source.files(earlier, set(bases.values()), meter) \
                if earlier is not None and bases else {}
            return write_image(facts, files, held, w, bases=bases, base_files=base_files,
                               store=source.cache, meter=meter).to_meta()
        return fill

    def pending_all(self) -> dict[str, dict[str, set[str]]]:
        """What messages still in custody will give each peer once they arrive, in one
        pass over custody."""
        out: dict[str, dict[str, set[str]]] = {}
        for msg in self.node.state.messages(SENDING):
            mine = out.setdefault(msg.peer, {})
            for kind, values in msg.meta.get("holds", {}).items():
                mine.setdefault(kind, set()).update(values)
        return out

    # what comes back
    def on_delivered(self, msg: Message) -> None:
        holds = msg.meta.get("holds", {})
        now = self.node.clock()
        for kind, values in holds.items():
            if kind == COMMIT and any(self.store.refused(msg.peer, v) for v in values):
                continue
            self.store.hold(msg.peer, kind, list(values), now)

    def on_sync(self, header: Header, path: Path) -> None:
        doc = read_control(self.node, header, path)
        commit, layers, images, providers = _holdings(doc)
        self.store.replace_holdings(header.src, commit, layers, images, self.node.clock(),
                                    providers, as_of=header.created)
        log.info("%s reports config %s, %d layers, %d images; answering its sync",
                 header.src, (commit or "none")[:12], len(layers), len(images))
        release = self.release_for(header.src)
        if release is None:
            log.info("%s is in channel %s, which no rollout reached yet", header.src,
                     self.node.home.fleet.channel_of(header.src))
        elif not self._publish_to(header.src, release, True).messages:
            log.info("%s is up to date", header.src)

    def on_image_request(self, header: Header, path: Path) -> None:
        """An outpost's apply found images missing: send them (only the layers it lacks),
        or say that Earth does not have them either."""
        refs, layers, release, full = _image_request(read_control(self.node, header, path))
        sent, unavailable = [], []
        held = set(layers)
        for ref in refs:
            try:
                facts = self.source.facts(ref)
            except ConfigError:
                unavailable.append(ref)
                continue
            self._image_need(header.src, facts, held, release, full=full).send([header.src])
            sent.append(ref)
        if unavailable:
            self.sender.submit(header.src, "image-unavailable", None, priority=EXPEDITED,
                               reply_to=header.id,
                               meta={"refs": unavailable, "release": release,
                                     "reason": f"not in the {self.source.where} either"})
        self.store.add_report(header.src, "image-request", release,
                              {"refs": refs, "sent": sent, "unavailable": unavailable},
                              self.node.clock())
        log.log(30 if unavailable else 20, "%s asks for %s: sent %s%s", header.src,
                ", ".join(refs), ", ".join(sent) or "nothing",
                f"; Earth does not have {', '.join(unavailable)}" if unavailable else "")

    def on_report(self, header: Header, path: Path) -> None:
        meta = header.meta
        event, release = str(meta.get("event", "?")), meta.get("release")
        # Dated when the outpost made it: a lossy link delivers reports out of order, and
        # "the last report" must be the outpost's latest, not the latest to arrive.
        self.store.add_report(header.src, event, release if isinstance(release, str) else None,
                              {k: v for k, v in meta.items() if k != "event"}, header.created)
        level = 30 if event in WARNING_EVENTS else 20
        log.log(level, "%s reports %s for %s: %s", header.src, event, release,
                meta.get("error") or meta.get("head") or "")
        head = meta.get("head")
        if event == "release-refused":
            self.store.hold(header.src, COMMIT,
                            [head] if isinstance(head, str) and COMMIT_RE.match(head) else [],
                            self.node.clock())
        if event in OUTCOMES and isinstance(release, str):
            self._advance_rollout(release)


def _holdings(doc: Any) -> tuple[str | None, list[str], list[str], list[str]]:
    if not isinstance(doc, dict):
        raise MalformedBundle("sync payload must be a map", reason="bad-sync")
    commit, layers, images = doc.get("commit"), doc.get("layers", []), doc.get("images", [])
    providers = doc.get("providers", [])
    if not isinstance(providers, list) or not all(
            isinstance(p, str) and safe_file_name(p) for p in providers):
        raise MalformedBundle("sync providers must be package paths", reason="bad-sync")
    if commit is not None and not (isinstance(commit, str) and COMMIT_RE.match(commit)):
        raise MalformedBundle("sync commit must be 40 hex", reason="bad-sync")
    for name, values in (("layers", layers), ("images", images)):
        if not isinstance(values, list) or not all(
                isinstance(v, str) and DIGEST.match(v) for v in values):
            raise MalformedBundle(f"sync {name} must be sha256 digests", reason="bad-sync")
    return commit, layers, images, providers


def _image_request(doc: Any) -> tuple[list[str], list[str], str | None, set[str]]:
    if not isinstance(doc, dict):
        raise MalformedBundle("image-request payload must be a map", reason="bad-request")
    refs, layers, release = doc.get("refs"), doc.get("layers", []), doc.get("release")
    full = doc.get("full", [])  # layers whose delta did not rebuild: send them whole
    if not isinstance(full, list) or not all(isinstance(d, str) and DIGEST.match(d)
                                             for d in full):
        raise MalformedBundle("image-request full must be sha256 digests", reason="bad-request")
    if not isinstance(refs, list) or not 0 < len(refs) <= 100 or not all(
            isinstance(r, str) and IMAGE_REF.match(r) for r in refs):
        raise MalformedBundle("image-request needs 1 to 100 image refs", reason="bad-request")
    if not isinstance(layers, list) or not all(
            isinstance(d, str) and DIGEST.match(d) for d in layers):
        raise MalformedBundle("image-request layers must be sha256 digests",
                              reason="bad-request")
    if release is not None and not (isinstance(release, str) and COMMIT_RE.match(release)):
        raise MalformedBundle("image-request release must be a commit", reason="bad-request")
    return list(dict.fromkeys(refs)), layers, release, set(full)


def _describe(msg: Message, what: str) -> dict[str, Any]:
    return {"id": msg.id, "kind": msg.kind, "size": msg.size, "units": msg.units,
            "what": what, "path": msg.path, "start": custody_start(msg)}

