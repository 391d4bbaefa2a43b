"""Crash consistency of applies: kill -9 the outpost node at random moments of releases.

    .venv/bin/python scripts/kill9-applies.py [--releases 12] [--seed 1]

Real processes (tests/test_e2e_apply.py's site: Earth, an outpost on the second Docker
daemon, link-sim with 100 ms latency and 10% loss) and two services. Each release changes
the app's image (v1/v2) and start-up delay (0-1.5 s), the side service's environment, and
three in ten have a health check that fails. After `publish`, the outpost node is killed
with SIGKILL at a random moment (0.3-4 s), started again, and once the apply has ended:

- a good release must end `applied`, a bad one `rolled-back` (`failed` when nothing ran
  before it);
- exactly one container of ours per service runs, and no other container of ours exists
  (not both versions, not neither; none at all after a first release that failed).

Needs `scripts/services start --outpost-docker` (it reads .services/env). Exit status 1 on
any breach.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Services, read_env_file  # noqa: E402
from tests.procs import running, stop  # noqa: E402
from tests.test_e2e_apply import (  # noqa: E402
    ApplySite,
    docker_release,
    free_port,
    service_toml,
    web_images,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = read_env_file(ROOT / ".services" / "env")
    services = Services(env["DOCKER_HOST"], env["OUTPOST_REGISTRY"],
                        env.get("OUTPOST_DOCKER_OUTPOST"))
    site = ApplySite(Path(tempfile.mkdtemp(prefix="kill9-applies-")), services,
                     "outpost-test/kill9")
    rng = random.Random(args.seed)
    images = web_images(site, services.client(), "v1", "v2")
    outpost = services.client(site.outpost_docker)
    app, side = free_port(), free_port()
    problems: list[str] = []
    applied = False
    site.start("--latency", "100ms", "--loss", "0.1", "--seed", str(args.seed))
    try:
        with running(*site.procs):
            for n in range(args.releases):
                slow = json.dumps(["sh", "-c", f"sleep {rng.choice([0, 0.5, 1.5])}; "
                                   f"exec httpd -f -p {app} -h /www"])
                bad = rng.random() < 0.3
                check = (f'url = "http://127.0.0.1:{app}/{"missing" if bad else ""}"\n'
                         'interval = "200ms"\nretries = 10\n')
                text = docker_release(
                    images, service_toml("app", images[n % 2], app, command=slow, health=check),
                    service_toml("side", images[0], side, extra=f'env = {{ N = "{n % 3}" }}\n'))
                commit = site.release(text, f"release {n}")
                site.publish()
                time.sleep(rng.uniform(0.3, 4.0))
                mars = site.procs[2]
                stop(mars, signal.SIGKILL)
                time.sleep(rng.uniform(0, 1))
                site.restart_mars(mars)
                done = site.wait_outcome(commit, 120)
                alive = sorted(c.labels["org.outpost.service"] for c in site.containers(outpost))
                every = len(site.containers(outpost, all_=True))
                applied = applied or not bad
                expected = "applied" if not bad else "rolled-back" if applied else "failed"
                running_now = (["app", "side"], 2) if applied else ([], 0)
                ok = done["state"] == expected and (alive, every) == running_now
                print(f"release {n}: {'bad' if bad else 'good'}, {done['state']} after "
                      f"{done['attempts']} run(s); running {alive}, {every} container(s): "
                      f"{'ok' if ok else 'BREACH'}", flush=True)
                if not ok:
                    problems.append(f"release {n}: {done['state']}, {alive}, {every}")
    finally:
        for c in site.containers(outpost, all_=True):
            c.remove(force=True)
    print(f"{args.releases} kills, {len(problems)} breach(es): {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
