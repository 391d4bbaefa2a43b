"""What a node holds and does, as plain data: read from the same state and spool the
daemon uses (no second source of truth). `outpost-node status` prints it, and the status
page (outpost/web) serves it."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..apply.context import Paths
from ..contact import Schedule
from ..delivery import clock_verdict
from ..errors import GitError, OutpostError
from ..home import Home
from ..node.context import Node, open_node
from ..release import git
from ..store.applies import APPLIED, FINAL, WAITING, ApplyStore
from ..store.releases import IMAGE, LAYER, ReleaseStore
from ..store.spool import bundle_files, read_reason
from ..store.state import ACKED, DELIVERED, FAILED, FLIGHT, SENDING, Message, Unit

if TYPE_CHECKING:
    from ..gateway.registry import Registry

APPLY_EVENTS = (*FINAL, WAITING)


def status_info(home: Home) -> dict[str, Any]:
    node = open_node(home)
    try:
        return _status(node)
    finally:
        node.state.close()


def _status(node: Node) -> dict[str, Any]:
    home, st, now = node.home, node.state, time.time()
    s = home.settings
    outlook = Outlook.of(node)
    schedule = outlook.schedule
    peers = []
    for peer in node.peers():
        est = st.rtt(peer, s.rtt)
        offset = st.clock_offset(peer)
        peers.append({"name": peer, "srtt": est.srtt, "rtt_samples": est.samples,
                      "outbox_files": len(bundle_files(home.outbox(peer))),
                      "clock_offset": offset,
                      "clock": clock_verdict(offset, s.clock_skew, s.rtt),
                      "window": window(schedule, now)})
    sending, journeys = [], []
    units_of = st.units_by_message(SENDING)
    for m in st.messages(SENDING):
        units = units_of.get(m.id, [])
        sending.append({"id": m.id, "kind": m.kind, "peer": m.peer, "size": m.size,
                        "units": m.units, "acked": sum(u.state == ACKED for u in units),
                        "in_flight": sum(u.state == FLIGHT for u in units),
                        "age": now - m.created, "expires_in": m.expires - now,
                        "resent_whole": m.rounds})
        journeys.append(_journey(node, m, units, now, outlook))
    failed = [{"id": m.id, "kind": m.kind, "peer": m.peer, "size": m.size,
               "why": m.meta.get("why", ""), "age": now - m.created}
              for m in st.messages(FAILED)]
    journeys += [_journey(node, m, [], now, outlook) for m in st.finished_messages(RECENT)]
    reasm = [{"parent": r["parent"], "src": r["src"], "kind": r["kind"], "total": r["total"],
              "received": r["received"], "fragments": r["count"]}
             for r in st.reassemblies()]
    quarantined = [{"file": p.name, "reason": q.reason, "error": q.error}
                   for p in bundle_files(home.quarantine) if (q := read_reason(p))]
    info = {"name": home.name, "role": home.role, "home": str(home.path), "now": now,
            "peers": peers,
            "sending": sending, "failed": failed, "bundles": journeys, "reassembling": reasm,
            "inbox_files": len(bundle_files(home.inbox)),
            "delivered_seen": st.seen_count(),
            "quarantine": quarantined, "status_page": _status_page(home),
            **release_status(node, schedule), **apply_status(node)}
    return info


RECENT = 30  # finished messages the bundle journeys show


def _journey(node: Node, m: Message, units: list[Unit], now: float,
             outlook: Outlook) -> dict[str, Any]:
    """Where a message is on its way (`units`: its units, while in custody): queued (in
    custody, nothing taken yet), sent (the link took some of it), acked (the peer holds it
    all), applied (the release it belongs to was applied there); or failed / expired,
    with why."""
    stage = m.state
    if m.state == SENDING:
        stage = "sent" if any(u.state in (FLIGHT, ACKED) for u in units) else "queued"
    elif m.state == DELIVERED:
        release = m.meta.get("release")
        applied = isinstance(release, str) and ReleaseStore(node.state).reported(
            m.peer, release, APPLIED)
        stage = "applied" if applied else "acked"
    return {**message_progress(m, units, now, outlook), "priority": m.priority,
            "stage": stage, "release": m.meta.get("release")}


def message_progress(m: Message, units: list[Unit], now: float,
                     outlook: Outlook) -> dict[str, Any]:
    """How far a message is: units and bytes acknowledged, bytes left and an ETA."""
    acked = sum(u.size for u in units if u.state == ACKED)
    total = sum(u.size for u in units) or m.size
    left = max(total - acked, 0) if m.state == SENDING else 0
    return {"id": m.id, "kind": m.kind, "peer": m.peer, "size": m.size, "units": m.units,
            "acked_units": sum(u.state == ACKED for u in units), "bytes_acked": acked,
            "bytes_left": left,
            "percent": 100.0 if m.state == DELIVERED else 100.0 * acked / max(total, 1),
            "eta": outlook.eta(m.peer, left, now) if m.state == SENDING else None,
            "why": m.meta.get("why", ""), "age": now - m.created}


@dataclass(frozen=True)
class Outlook:
    """What the node expects of its links, read once per report (which may cover thousands
    of messages): the bandwidth, the contact plan, each peer's smoothed round trip."""

    bandwidth: int
    schedule: Schedule | None
    srtt: dict[str, float]

    @classmethod
    def of(cls, node: Node) -> Outlook:
        s = node.home.settings
        return cls(s.bandwidth, node.home.contact_schedule(),
                   {p: node.state.rtt(p, s.rtt).srtt for p in node.peers()})

    def eta(self, peer: str, bytes_left: int, now: float) -> float | None:
        """Seconds until what is left of a message is acknowledged: its bytes at the
        link's `bandwidth`, sent only while the contact plan has the link up, and one
        round trip. None where the bandwidth is not set or the plan never gives the link
        that long."""
        if not self.bandwidth:
            return None
        needed = bytes_left / self.bandwidth
        done = now + needed if self.schedule is None else self.schedule.after_up_time(
            now, needed)
        if math.isinf(done):
            return None
        return done - now + self.srtt.get(peer, 0.0)


def window(schedule: Schedule | None, now: float) -> dict[str, Any] | None:
    """The link's contact window now and the next one, from the node's contact plan (None
    without a plan); times are Unix seconds, None for never."""
    if schedule is None:
        return None
    up = schedule.is_up(now)
    start = schedule.next_up(schedule.window_end(now) if up else now)
    return {"up": up, "until": _finite(schedule.window_end(now)) if up else None,
            "next_start": _finite(start),
            "next_end": _finite(schedule.window_end(start)) if math.isfinite(start) else None}


def _finite(t: float) -> float | None:
    return t if math.isfinite(t) else None


def _status_page(home: Home) -> str | None:
    """The running node's status page (HOME/http.url, written by `start`)."""
    try:
        return (home.path / "http.url").read_text().strip() or None
    except OSError:
        return None


def release_status(node: Node, schedule: Schedule | None = None) -> dict[str, Any]:
    store = ReleaseStore(node.state)
    if node.home.role == "earth":
        try:
            config_head: str | None = git.head(node.home.config_repo)
        except GitError:
            config_head = None
        now = time.time()
        outposts = [_outpost(node, store, p, config_head, now, schedule)
                    for p in node.peers()]
        rollouts = [{k: v for k, v in r.items() if k != "release"}
                    | {"channel": _channel_at(node, r["stage"])}
                    for r in store.rollouts(5)]
        return {"config_head": config_head, "outposts": outposts, "rollouts": rollouts,
                "reports": store.reports(10)}
    mirror = node.home.mirror
    return {"mirror_head": git.mirror_head(mirror) if mirror.exists() else None,
            "releases": [{k: v for k, v in r.items() if k != "meta"}
                         for r in store.releases()],
            "images": store.images(), "layers_held": len(store.layers())}


def _outpost(node: Node, store: ReleaseStore, peer: str, head: str | None, now: float,
             schedule: Schedule | None) -> dict[str, Any]:
    """One outpost of Earth's fleet: its channel, what it holds and runs against what it
    should (`target`: its channel's release), its last report, when Earth last heard from
    it, and what waits for it (messages and bytes in custody, files in the outbox)."""
    fleet = node.home.fleet
    channel = fleet.channel_of(peer)
    if len(fleet.channels) == 1:
        target = head
    else:
        reached = store.reached(fleet, peer)
        target = reached["commit_id"] if reached else None
    last = store.latest_report(peer)
    running = store.last_report(peer, APPLY_EVENTS)
    messages, left = node.state.backlog(peer)
    heard = max((t for t in (node.state.last_ack(peer), last and last["at"]) if t),
                default=None)
    commit = store.commit_of(peer)
    return {"peer": peer, "channel": channel, "groups": list(fleet.groups_of(peer)),
            "commit": commit, "target": target,
            "behind": target is not None and commit != target,
            "running": running["detail"].get("running") if running else None,
            "layers": len(store.holding(peer, LAYER)),
            "images": len(store.holding(peer, IMAGE)),
            "last_report": None if last is None else {
                "event": last["event"], "release": last["release"], "at": last["at"]},
            "heard": heard, "heard_ago": None if heard is None else now - heard,
            "srtt": node.state.rtt(peer, node.home.settings.rtt).srtt,
            "backlog_messages": messages, "backlog_bytes": left,
            "outbox_files": len(bundle_files(node.home.outbox(peer))),
            "window": window(schedule, now)}


def _channel_at(node: Node, stage: int) -> str:
    channels = node.home.fleet.channels
    return channels[min(stage, len(channels) - 1)]


SORTS = {"name": lambda o: o["peer"], "channel": lambda o: o["channel"],
         "release": lambda o: (not o["behind"], o["commit"] or ""),
         "report": lambda o: -(o["last_report"] or {}).get("at", 0),
         "heard": lambda o: o["heard"] or 0.0,
         "backlog": lambda o: -o["backlog_bytes"]}


def sort_outposts(outposts: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Earth's outposts in the order a person asked for: name, channel, release (those
    behind first), report (newest first), heard (silent longest first), backlog (largest
    first)."""
    return sorted(outposts, key=SORTS[key])


def apply_status(node: Node) -> dict[str, Any]:
    """Earth: each outpost's running release and last apply report. Outpost: the running
    release, the history of applies and what the active one waits for."""
    if node.home.role == "earth":
        store = ReleaseStore(node.state)
        fleet = {}
        for peer in node.peers():
            last = store.last_report(peer, APPLY_EVENTS)
            detail = last["detail"] if last else {}
            fleet[peer] = {"running": detail.get("running"), "last_apply": last}
        return {"fleet": fleet}
    applies = ApplyStore(node.state)
    current = applies.current()
    active = applies.active()
    return {
        "running": None if current is None else {
            "commit": current.commit, "apply": current.apply_id, "since": current.since},
        "applies": [r.to_json() for r in applies.history(20)],
        "waiting": None if active is None or active.state != WAITING else {
            "apply": active.id, "commit": active.commit_id, "images": active.wanted,
            "requests": active.requests, "next_request": active.next_request,
            "reason": active.reason},
        "apply_logs": str(Paths(node.home).logs),
    }


MAX_REPOS, MAX_TAGS = 200, 50  # what the page lists of a registry, at most


def registry_view(home: Home) -> dict[str, Any]:
    """The outpost registry's repositories, tags, image IDs and sizes (the page's registry
    browser); {"registry": None} at Earth or where none is set, and the error if it does
    not answer."""
    from ..gateway.registry import outpost_registry

    if home.role != "outpost" or not home.outpost.registry:
        return {"registry": None, "repositories": []}
    try:
        with outpost_registry(home.outpost, home.path, timeout=10) as reg:
            repos = [{"name": repo, "tags": [_tag(reg, repo, t)
                                             for t in reg.tags(repo)[:MAX_TAGS]]}
                     for repo in reg.catalog()[:MAX_REPOS]]
            return {"registry": reg.url, "repositories": repos}
    except OutpostError as e:
        return {"registry": home.outpost.registry, "repositories": [], "error": str(e)}


def _tag(reg: Registry, repo: str, tag: str) -> dict[str, Any]:
    """A tag's manifest digest, its image ID (config digest) and size (config + layers)."""
    found = reg.get_manifest(repo, tag)
    if found is None:
        return {"tag": tag, "digest": None, "image_id": None, "size": None}
    _, body, digest = found
    try:
        manifest = json.loads(body)
        config = manifest.get("config") or {}
        size = int(config.get("size", 0)) + sum(int(x.get("size", 0))
                                                for x in manifest.get("layers") or [])
        return {"tag": tag, "digest": digest, "image_id": config.get("digest"), "size": size}
    except (ValueError, AttributeError, TypeError):
        return {"tag": tag, "digest": digest, "image_id": None, "size": None}
