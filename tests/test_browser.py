"""The status page in a real browser (Debian's headless Chromium through Selenium and
chromedriver) while a real release crosses a real link-sim: Earth's page shows the image
bundle go from queued or sent to applied, the outpost's page lists the new image in its
registry section, and both pages are saved as screenshots.

The nodes, link-sim, Docker daemons and registry are the ones of tests/test_e2e_apply.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .procs import running, wait_for
from .test_e2e_apply import (  # noqa: F401 - site is a fixture
    ApplySite,
    docker_release,
    free_port,
    service_toml,
    site,
    web_images,
)

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_url(home: Path) -> str:
    wait_for(lambda: (home / "http.url").exists(), 30, f"{home.name}'s status page")
    return (home / "http.url").read_text().strip()


def stages(driver: object) -> dict[str, str]:
    """Bundle id -> the journey stage the page shows now (read in one go: the page
    redraws its tables every poll)."""
    pairs = driver.execute_script(  # type: ignore[attr-defined]
        "return [...document.querySelectorAll('span.journey')]"
        ".map(e => [e.dataset.id, e.dataset.stage])")
    return dict(pairs or [])


def test_a_release_seen_crossing_on_both_pages(site: ApplySite,  # noqa: F811
                                               browser: object,
                                               docker_client: docker.DockerClient,
                                               tmp_path: Path) -> None:
    [v1] = web_images(site, docker_client, "v1")
    port = free_port()
    commit = site.release(docker_release([v1], service_toml("app", v1, port)), "v1")
    site.start("--latency", "500ms", "--bandwidth", "512k")
    driver = browser
    with running(*site.procs):
        earth, mars = page_url(site.earth.path), page_url(site.mars.path)
        driver.get(earth)  # type: ignore[attr-defined]
        wait_for(lambda: "earth node earth" in driver.page_source, 20, "Earth's page")  # type: ignore[attr-defined]
        published = site.publish()
        image = next(m["id"] for r in published for m in r["messages"] if m["kind"] == "image")
        seen: list[str] = []

        def applied() -> bool:
            stage = stages(driver).get(image)
            if stage and (not seen or seen[-1] != stage):
                seen.append(stage)
            return stage == "applied"

        wait_for(applied, 180, "the image bundle shown applied on Earth's page")
        assert seen[0] in ("queued", "sent") and seen[-1] == "applied", seen
        driver.save_screenshot(str(tmp_path / "earth.png"))  # type: ignore[attr-defined]

        driver.get(mars)  # type: ignore[attr-defined]
        tag = v1.rsplit(":", 1)[1]
        repo = v1.rsplit(":", 1)[0]

        def listed() -> bool:
            rows = driver.execute_script(  # type: ignore[attr-defined]
                "return [...document.querySelectorAll('#registry tr')].map(r => r.innerText)")
            return any(repo in r and tag in r for r in rows or [])

        wait_for(listed, 60, "the new image in the outpost page's registry section")
        assert commit[:12] in driver.page_source  # type: ignore[attr-defined]
        driver.save_screenshot(str(tmp_path / "mars.png"))  # type: ignore[attr-defined]
    for shot in ("earth.png", "mars.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
