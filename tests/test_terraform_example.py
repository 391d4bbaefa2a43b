"""The example's Terraform config (terraform/): formatted, its lock file pins the docker
provider with real hashes, and `terraform validate` passes where a provider mirror holds
kreuzwerker/docker. Terraform never reaches the network here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "terraform"
LOCK = EXAMPLE / ".terraform.lock.hcl"
DOCKER = "registry.terraform.io/kreuzwerker/docker"
TERRAFORM = shutil.which("terraform") or (
    "/usr/local/bin/terraform" if Path("/usr/local/bin/terraform").exists() else None)
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="no terraform on this machine")


@pytest.fixture
def tf_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which terraform reads no CLI config and calls no one."""
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(TF_CLI_CONFIG_FILE=str(cli_config), CHECKPOINT_DISABLE="1",
               TF_IN_AUTOMATION="1", TF_DATA_DIR=str(tmp_path / "tf-data"))
    return env


def terraform(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM is not None
    return subprocess.run([TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def locked_docker() -> tuple[str, str, list[str]]:
    """(version, constraints, hashes) of the docker provider in the lock file."""
    block = re.search(r'provider\s+"' + re.escape(DOCKER) + r'"\s*\{(.*?)\n\}', LOCK.read_text(),
                      re.S)
    assert block, f"{LOCK} does not name {DOCKER}"
    version = re.search(r'^\s*version\s*=\s*"([^"]+)"', block.group(1), re.M)
    constraints = re.search(r'^\s*constraints\s*=\s*"([^"]+)"', block.group(1), re.M)
    hashes = re.search(r'hashes\s*=\s*\[(.*?)\]', block.group(1), re.S)
    assert version and constraints and hashes
    return (version.group(1), constraints.group(1),
            re.findall(r'"([^"]+)"', hashes.group(1)))


def test_lock_file_pins_the_docker_provider_3x_with_real_looking_hashes() -> None:
    version, constraints, hashes = locked_docker()
    assert re.fullmatch(r"3\.\d+\.\d+", version), version
    assert "~> 3.0" in constraints
    h1 = [h for h in hashes if h.startswith("h1:")]
    zh = [h for h in hashes if h.startswith("zh:")]
    assert h1 and zh and len(h1) + len(zh) == len(hashes), hashes
    assert all(re.fullmatch(r"h1:[A-Za-z0-9+/]{43}=", h) for h in h1), h1
    assert all(re.fullmatch(r"zh:[0-9a-f]{64}", h) for h in zh), zh
    assert len(set(zh)) == len(zh) and len(zh) >= 10  # one per platform the release built
    # the config asks for the same provider
    main = (EXAMPLE / "main.tf").read_text()
    assert re.search(r'source\s*=\s*"kreuzwerker/docker"', main)
    assert re.search(r'version\s*=\s*"~> 3\.0"', main)


def test_the_outposts_own_lock_file_reader_accepts_it() -> None:
    lockfile = pytest.importorskip("outpost.providers.lockfile")
    (docker,) = [p for p in lockfile.parse_lock(LOCK.read_text()) if p.source == DOCKER]
    assert docker.version == locked_docker()[0]


def test_the_service_is_outpost_toml_s() -> None:
    """main.tf runs what [[services]] "app" runs: image tag, command, env, network, health."""
    import tomllib

    toml = tomllib.loads((ROOT / "example" / "outpost.toml").read_text())
    (app,) = [s for s in toml["services"] if s["name"] == "app"]
    main = (EXAMPLE / "main.tf").read_text()

    def hcl_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{x}"' for x in items) + "]"

    assert f'app_image = "{app["image"]}"' in main
    assert app["image"] in [i["ref"] for i in toml["images"]]
    assert f"command      = {hcl_list(app['command'])}" in main
    assert "env          = " + hcl_list([f"{k}={v}" for k, v in app["env"].items()]) in main
    assert 'network_mode = "host"' in main and app["network"] == "host"
    health = app["health"]
    assert f"test     = {hcl_list(['CMD', *health['command']])}" in main
    assert f'interval = "{health["interval"]}"' in main
    assert f"retries  = {health['retries']}" in main
    assert f'timeout  = "{health["timeout"]}"' in main
    for var in ("registry", "release", "commit", "docker_host"):
        assert f'variable "{var}"' in main
    assert re.search(r'label\s*=\s*"org\.outpost\.release"\s*\n\s*value\s*=\s*var\.release',
                     main)


@needs_terraform
def test_terraform_fmt_check(tf_env: dict[str, str]) -> None:
    done = terraform(["fmt", "-check", "-diff", "-no-color", "."], EXAMPLE, tf_env)
    assert done.returncode == 0, done.stdout + done.stderr


def mirror_with_docker() -> tuple[Path | None, list[str]]:
    """The first provider mirror holding kreuzwerker/docker at the locked version (unpacked
    or packed layout), and the folders looked in."""
    version = locked_docker()[0]
    places = [p for p in (os.environ.get("OUTPOST_TF_MIRROR", ""), "/opt/tf-plugins") if p]
    for place in places:
        provider = Path(place) / DOCKER
        if (provider / version).is_dir() or any(provider.glob(f"*_{version}_*.zip")):
            return Path(place), places
    return None, places


@needs_terraform
def test_terraform_validate_where_the_mirror_holds_the_provider(
        tf_env: dict[str, str], tmp_path: Path) -> None:
    mirror, places = mirror_with_docker()
    if mirror is None:
        pytest.skip("kreuzwerker/docker is not in the provider mirror "
                    f"({', '.join(places)}; set OUTPOST_TF_MIRROR to one that has it)")
    work = tmp_path / "terraform"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns(".terraform"))
    init = terraform(["init", "-backend=false", "-input=false", "-no-color",
                      "-lockfile=readonly", f"-plugin-dir={mirror}"], work, tf_env)
    assert init.returncode == 0, init.stdout + init.stderr
    done = terraform(["validate", "-no-color"], work, tf_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / ".terraform.lock.hcl").read_text() == LOCK.read_text()
