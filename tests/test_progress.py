"""Progress of long work (issue 10): what the layers report and what a terminal shows.

The meters are checked against real work: `docker save` of a locally built image through
the real daemon, an archive pushed into the real registry, and `outpost-node send` run in
a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

import docker
import pytest
from rich.console import Console

from outpost.cli.progress import progress_bars
from outpost.codec import PartWriter, PayloadEncoder
from outpost.gateway.importer import Gateway
from outpost.gateway.registry import Registry
from outpost.images.archive import stage_archive
from outpost.images.pack import write_image
from outpost.node.context import open_node
from outpost.node.setup import init_home
from outpost.progress import Advance, MeteredReader, prefixed, running_total, silent
from outpost.release.manifest import ImageFacts
from outpost.sources.cache import LayerCache
from outpost.sources.docker import DockerSource
from outpost.store.releases import ReleaseStore

from .conftest import Services
from .images import app_image, busybox_base, image_facts, save_image
from .procs import tool


class Recorder:
    """A meter that remembers each piece of work: its total and the bytes reported."""

    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.done: dict[str, int] = defaultdict(int)

    def __call__(self, what: str, total: int | None = None, /) -> Advance:
        self.totals[what] = total

        def advance(n: int) -> None:
            self.done[what] += n
        return advance


def test_running_total_prefixed_and_metered_reader_report_bytes() -> None:
    rec = Recorder()
    report = running_total(prefixed(rec, "mars: ")("push", 10))
    for sent in (3, 7, 0, 10):  # a retry starts again from 0
        report(sent)
    assert rec.totals == {"mars: push": 10} and rec.done["mars: push"] == 10
    reader = MeteredReader(io.BytesIO(b"x" * 2500), rec("read", 2500))
    while reader.read(1000):
        pass
    assert rec.done["read"] == 2500
    assert silent("anything", 5)(7) is None


def test_bars_draw_on_a_terminal_and_stay_off_for_scripts() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with progress_bars(console=console) as meter:
        advance = meter("packing big.bin", 4 * 1024 * 1024)
        advance(4 * 1024 * 1024)
    assert "packing big.bin" in out.getvalue() and "4.2/4.2 MB" in out.getvalue()
    with progress_bars(show=False) as meter:
        assert meter is silent


@pytest.mark.slow
def test_packing_an_image_reports_docker_save_and_every_byte_packed(
        services: Services, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    busybox_base(docker_client, "outpost-test/progress-base:1")
    ref = "outpost-test/progress-app:1"
    app_image(docker_client, ref, "outpost-test/progress-base:1", "p1", size_kb=300)
    image_id, diff_ids = image_facts(docker_client, ref)
    facts = ImageFacts(ref=ref, image_id=image_id, diff_ids=diff_ids)
    rec = Recorder()
    with open(tmp_path / "payload", "wb") as out:
        files = DockerSource(services.docker_host, LayerCache(tmp_path / "cache", 1 << 30)
                             ).files(facts, set(diff_ids), rec)
        write_image(facts, files, set(), PartWriter(PayloadEncoder("zstd", 3), out, None),
                    meter=rec)
    saved = len(save_image(docker_client, image_id))
    assert rec.done[f"docker save {ref}"] == saved  # every byte of the stream
    packed = f"packing {ref}"
    assert rec.totals[packed] is not None and rec.totals[packed] > 300 * 1024
    assert rec.done[packed] == rec.totals[packed]


@pytest.mark.slow
def test_importing_an_archive_reports_reading_and_pushing_each_layer(
        services: Services, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    busybox_base(docker_client, "outpost-test/progress-base:1")
    ref = f"outpost-test/progress-{uuid.uuid4().hex[:8]}:1"
    app_image(docker_client, "outpost-test/progress-app:1", "outpost-test/progress-base:1",
              "p1", size_kb=300)
    docker_client.api.tag("outpost-test/progress-app:1", *ref.rsplit(":", 1))
    try:
        archive = tmp_path / "app.tar"
        archive.write_bytes(save_image(docker_client, ref))
    finally:
        docker_client.images.remove(ref)
    rec = Recorder()
    (tmp_path / "staged").mkdir()
    ((facts, files),) = stage_archive(archive, tmp_path / "staged", rec)
    reading = f"reading {archive.name}"
    assert rec.done[reading] == rec.totals[reading] == sum(
        p.stat().st_size for p in files.values())
    node = open_node(init_home(tmp_path / "mars", "outpost", "mars"))
    gateway = Gateway(Registry(services.registry), ReleaseStore(node.state))
    assert gateway.import_image(facts, files, meter=rec) == []
    pushes = [w for w in rec.totals if w.startswith("pushing ")]
    assert len(pushes) == len(facts.diff_ids)
    assert all(rec.done[w] == rec.totals[w] for w in pushes)


@pytest.mark.slow
def test_send_of_a_big_file_shows_a_bar_on_a_terminal_and_none_with_json(
        tmp_path: Path) -> None:
    earth, mars = tmp_path / "earth", tmp_path / "mars"
    for role, home in (("earth", earth), ("outpost", mars)):
        subprocess.run([tool("outpost-node"), "init", "--role", role, "--home", str(home)],
                       check=True, capture_output=True)
    subprocess.run([tool("outpost-node"), "trust", "--home", str(earth), str(mars)],
                   check=True, capture_output=True)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    send = [tool("outpost-node"), "send", "--home", str(earth), "--to", "outpost", str(big)]
    assert "packing big.bin" in _on_a_terminal(send)
    out = subprocess.run([*send, "--json"], capture_output=True, text=True, check=True)
    assert out.stderr == ""


def _on_a_terminal(args: list[str]) -> str:
    """What `args` writes to its stderr when that is a terminal (a pseudo-terminal here)."""
    main, side = pty.openpty()
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(args, stdout=stdout, stderr=side, stdin=subprocess.DEVNULL)
        os.close(side)
        seen = bytearray()
        while True:
            ready, _, _ = select.select([main], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the far end closed: the process is done
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(60) == 0, seen.decode(errors="replace")
    os.close(main)
    return seen.decode(errors="replace")
