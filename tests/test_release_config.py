"""`outpost.toml` (outpost/release/config.py) and the release manifest (release/manifest.py).

Pure: text in, a ReleaseConfig or a ConfigError naming the field out; metadata maps in, an
ImageFacts/Release or a MalformedBundle with reason bad-release out.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from outpost.errors import ConfigError, MalformedBundle
from outpost.release.config import Apply, Health, Service, parse_release_config
from outpost.release.manifest import ImageFacts, Release
from outpost.release.template import project_root

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"

IMAGE = '[[images]]\nref = "app/web:1.0"\n\n'
COMMAND_APPLY = '[apply]\napplier = "command"\ncommand = ["true"]\n\n'
SERVICE = '[[services]]\nname = "web"\nimage = "app/web:1.0"\n'


def docker_config(service_extra: str = "", apply_extra: str = "") -> str:
    return (IMAGE + f'[apply]\napplier = "docker"\n{apply_extra}\n' + SERVICE
            + service_extra)


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_release_config(text, "test.toml")
    message = str(info.value)
    assert message.startswith("test.toml"), f"the source is not named: {message}"
    return message


# --- the project's own example ---

def test_the_project_example_parses() -> None:
    text = (project_root() / "example" / "outpost.toml").read_text()
    cfg = parse_release_config(text)
    assert cfg.images == ["outpost-demo/app:1.0"]
    assert cfg.apply == Apply(applier="docker", command=[], workdir=".", timeout=600.0, env={})
    (app,) = cfg.services
    assert app.name == "app" and app.image == "outpost-demo/app:1.0"
    assert app.command == ["httpd", "-f", "-p", "8080", "-h", "/www"]
    assert app.network == "host" and app.env == {"GREETING": "hello from Earth"}
    assert app.ports == ["8080"]
    assert app.health == Health(command=["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
                                interval=1.0, retries=10, timeout=5.0)


def test_a_full_docker_config() -> None:
    text = docker_config(
        'command = "httpd -f -p 80"\nnetwork = "host"\nports = ["80", "53/udp"]\n'
        'init = false\n'
        'env = { A = "1", B = 2 }\n'
        '[services.health]\ncommand = "true"\ninterval = "500ms"\nretries = 3\n'
        'timeout = 4\n',
        apply_extra='timeout = "1h"\nenv = { X = "y" }\nworkdir = "deploy"\n')
    cfg = parse_release_config(text)
    assert cfg.apply == Apply(applier="docker", command=[], workdir="deploy", timeout=3600.0,
                              env={"X": "y"})
    assert cfg.services == [Service(
        name="web", image="app/web:1.0", command=["httpd", "-f", "-p", "80"],
        env={"A": "1", "B": "2"}, network="host", ports=["80", "53/udp"],
        health=Health(command=["true"], interval=0.5, retries=3, timeout=4.0), init=False)]


def test_defaults() -> None:
    cfg = parse_release_config(docker_config())
    (svc,) = cfg.services
    assert svc.command is None and svc.env == {} and svc.network == "host"
    assert svc.ports == [] and svc.health is None and svc.init is True
    assert cfg.apply.timeout == 600.0 and cfg.apply.workdir == "."


def test_command_applier_needs_no_services_or_images() -> None:
    cfg = parse_release_config('[apply]\napplier = "command"\n'
                               'command = "terraform apply -auto-approve"\n'
                               'workdir = "terraform"\n')
    assert cfg.images == [] and cfg.services == []
    assert cfg.apply.command == ["terraform", "apply", "-auto-approve"]
    assert cfg.apply.workdir == "terraform"


@pytest.mark.parametrize(("ref", "expected"), [
    ("app", "app:latest"),
    ("app:1.0", "app:1.0"),
    ("outpost-demo/app", "outpost-demo/app:latest"),
    ("a.b/c_d/e-f:v1.2_3", "a.b/c_d/e-f:v1.2_3"),
    ("registry.local/app", "registry.local/app:latest"),
    ("x:Latest-RC.1", "x:Latest-RC.1"),
])
def test_a_ref_without_a_tag_means_latest(ref: str, expected: str) -> None:
    cfg = parse_release_config(f'[[images]]\nref = "{ref}"\n\n' + COMMAND_APPLY)
    assert cfg.images == [expected]


def test_a_service_image_without_a_tag_matches_its_latest_image() -> None:
    text = ('[[images]]\nref = "app"\n\n[[services]]\nname = "s"\nimage = "app:latest"\n\n'
            '[[services]]\nname = "t"\nimage = "app"\n')
    cfg = parse_release_config(text)
    assert [s.image for s in cfg.services] == ["app:latest", "app:latest"]


# --- refusals, each naming the field ---

@pytest.mark.parametrize(("text", "names"), [
    ("[[images]\nref = 1", "not valid TOML"),
    ('images = "app"\n' + COMMAND_APPLY, "images"),
    ('[images]\nref = "app"\n' + COMMAND_APPLY, "images"),
    ("[[images]]\n\n" + COMMAND_APPLY, "images[0]"),
    ("[[images]]\nref = 5\n\n" + COMMAND_APPLY, "images[0]"),
    (IMAGE + '[[images]]\nref = "Bad/Upper"\n\n' + COMMAND_APPLY, "images[1]"),
    ('[[images]]\nref = "app@sha256:abc"\n\n' + COMMAND_APPLY, "images[0]"),
    ('[[images]]\nref = "app:"\n\n' + COMMAND_APPLY, "images[0]"),
    ('[[images]]\nref = "/app"\n\n' + COMMAND_APPLY, "images[0]"),
    ('[[images]]\nref = "app:1 "\n\n' + COMMAND_APPLY, "images[0]"),
    (IMAGE + IMAGE + COMMAND_APPLY, "[[images]]"),
    ('[[images]]\nref = "app"\n\n[[images]]\nref = "app:latest"\n\n' + COMMAND_APPLY,
     "[[images]]"),
    ('apply = "docker"\n', "apply"),
    (IMAGE + '[apply]\napplier = "ansible"\n', "apply.applier"),
    (IMAGE + '[apply]\napplier = "docker"\n', "[[services]]"),
    (IMAGE + "[apply]\n", "[[services]]"),
    (IMAGE, "[[services]]"),
    ('[apply]\napplier = "command"\n', "command"),
    ('[apply]\napplier = "command"\ncommand = []\n', "command"),
    ('[apply]\napplier = "command"\ncommand = [1, 2]\n', "apply.command"),
    ('[apply]\napplier = "command"\ncommand = ["true"]\nenv = "A=1"\n', "apply.env"),
    ('[apply]\napplier = "command"\ncommand = ["true"]\nenv = ["A=1"]\n', "apply.env"),
    (IMAGE + 'services = "web"\n', "services"),
    (IMAGE + '[[services]]\nimage = "app/web:1.0"\n', "services[0]"),
    (IMAGE + '[[services]]\nname = "no spaces"\nimage = "app/web:1.0"\n', "services[0]"),
    (IMAGE + '[[services]]\nname = "-dash"\nimage = "app/web:1.0"\n', "services[0]"),
    (IMAGE + '[[services]]\nname = 7\nimage = "app/web:1.0"\n', "services[0]"),
    (IMAGE + '[[services]]\nname = "web"\n', "services[0].image"),
    (IMAGE + '[[services]]\nname = "web"\nimage = "NOPE"\n', "services[0].image"),
    (IMAGE + '[[services]]\nname = "web"\nimage = "app/other:1.0"\n', "app/other:1.0"),
    (IMAGE + '[[services]]\nname = "web"\nimage = "app/web"\n', "app/web:latest"),
    (IMAGE + SERVICE + SERVICE, "[[services]]"),
    (docker_config('network = "bridge"\n'), "network"),
    (docker_config('network = 1\n'), "network"),
    (docker_config('env = "A=1"\n'), "services[0].env"),
    (docker_config('command = [1]\n'), "services[0].command"),
    (docker_config('ports = [8080]\n'), "services[0].ports"),
    (docker_config('health = "wget -q http://x/"\n'), "services[0].health"),
    (docker_config('health = ["true"]\n'), "services[0].health"),
    (docker_config('[services.health]\ncommand = [true]\n'), "services[0].health.command"),
    (docker_config('ports = ["8080:80"]\n'), "services[0].ports"),
    (docker_config('ports = ["70000"]\n'), "services[0].ports"),
    (docker_config('network = "none"\nports = ["80"]\n'), "services[0].ports"),
    (docker_config('init = "yes"\n'), "services[0].init"),
    (docker_config('[services.health]\nretries = 3\n'), "services[0].health"),
    (docker_config('[services.health]\ncommand = ["true"]\nurl = "http://x/"\n'),
     "services[0].health"),
    (docker_config('[services.health]\nurl = "ftp://x/"\n'), "services[0].health.url"),
    (docker_config('[services.health]\ncommand = ["true"]\nretries = 0\n'),
     "services[0].health.retries"),
    (IMAGE + '[apply]\n' + SERVICE + 'ports = ["80"]\n' + SERVICE.replace('"web"', '"api"')
     + 'ports = ["80/tcp"]\n', "same port"),
])
def test_bad_configs_are_refused_naming_the_field(text: str, names: str) -> None:
    message = refused(text)
    assert names in message, f"{names!r} not named in: {message}"


def test_a_health_check_by_url() -> None:
    cfg = parse_release_config(docker_config('[services.health]\nurl = "http://127.0.0.1:80/"\n'
                                             'interval = "1s"\nretries = 5\n'))
    assert cfg.services[0].health == Health(url="http://127.0.0.1:80/", interval=1.0,
                                            retries=5, timeout=10.0)


def test_a_missing_service_image_says_how_to_fix_it() -> None:
    message = refused(IMAGE + '[[services]]\nname = "web"\nimage = "app/other:1.0"\n')
    assert "'web'" in message and "[[images]]" in message


@pytest.mark.parametrize("value", ['"1h"', '"250ms"', "30", "0.5", '"2d"', '".5s"'])
def test_good_durations(value: str) -> None:
    parse_release_config(docker_config(apply_extra=f"timeout = {value}\n"))


@pytest.mark.parametrize(("extra", "where"), [
    ('[services.health]\ncommand = ["true"]\ninterval = "soon"\n', "services[0].health"),
    ('[services.health]\ncommand = ["true"]\ntimeout = "10 parsecs"\n', "services[0].health"),
])
def test_a_bad_health_duration_names_the_field(extra: str, where: str) -> None:
    assert where in refused(docker_config(extra))


def test_a_bad_apply_timeout_names_the_field() -> None:
    assert "apply.timeout" in refused(docker_config(apply_extra='timeout = "soon"\n'))


def test_a_bad_duration_is_at_least_a_config_error() -> None:
    with pytest.raises(ConfigError, match="soon"):
        parse_release_config(docker_config(apply_extra='timeout = "soon"\n'))


def test_a_duration_of_the_wrong_type_is_a_config_error() -> None:
    assert "apply.timeout" in refused(docker_config(apply_extra='timeout = ["1s"]\n'))


def test_a_negative_timeout_is_refused() -> None:
    assert "apply.timeout" in refused(docker_config(apply_extra="timeout = -5\n"))


def test_health_retries_must_be_a_number() -> None:
    assert "retries" in refused(docker_config('[services.health]\ncommand = ["true"]\n'
                                              'retries = "many"\n'))


# --- the manifest that crosses the link ---

def test_image_facts_round_trip() -> None:
    facts = ImageFacts(ref="app/web:1.0", image_id=D1, diff_ids=[D2, D3, D2])
    assert ImageFacts.from_meta(facts.to_meta()) == facts
    assert ImageFacts.from_meta({**facts.to_meta(), "extra": 1}) == facts
    assert ImageFacts.from_meta({**facts.to_meta(), "diff_ids": []}).diff_ids == []


def test_release_round_trip() -> None:
    rel = Release(COMMIT, [ImageFacts("a:1", D1, [D2]), ImageFacts("b:2", D2, [D2, D3])])
    meta = rel.to_meta()
    assert Release.from_meta(meta) == rel
    assert rel.id == COMMIT[:12]
    assert Release.from_meta({"commit": COMMIT, "images": []}).images == []


FACTS: dict[str, Any] = {"ref": "a:1", "image_id": D1, "diff_ids": [D2]}


@pytest.mark.parametrize("meta", [
    None, [], "a:1",
    {k: v for k, v in FACTS.items() if k != "ref"},
    {**FACTS, "ref": 1},
    {k: v for k, v in FACTS.items() if k != "image_id"},
    {**FACTS, "image_id": "sha256:" + "1" * 63},
    {**FACTS, "image_id": "sha256:" + "A" * 64},
    {**FACTS, "image_id": "1" * 64},
    {**FACTS, "image_id": D1 + "\n"},
    {k: v for k, v in FACTS.items() if k != "diff_ids"},
    {**FACTS, "diff_ids": D2},
    {**FACTS, "diff_ids": [D2, "sha512:" + "2" * 64]},
    {**FACTS, "diff_ids": [2]},
])
def test_bad_image_facts_are_malformed(meta: Any) -> None:
    with pytest.raises(MalformedBundle) as info:
        ImageFacts.from_meta(meta)
    assert info.value.reason == "bad-release"


@pytest.mark.parametrize("meta", [
    None, "x", [COMMIT],
    {"images": []},
    {"commit": COMMIT[:39], "images": []},
    {"commit": COMMIT.upper(), "images": []},
    {"commit": COMMIT + "\n", "images": []},
    {"commit": int("1" * 40), "images": []},
    {"commit": COMMIT},
    {"commit": COMMIT, "images": {"a": FACTS}},
    {"commit": COMMIT, "images": [FACTS, {**FACTS, "image_id": "nope"}]},
    {"commit": COMMIT, "images": [None]},
])
def test_bad_releases_are_malformed(meta: Any) -> None:
    with pytest.raises(MalformedBundle) as info:
        Release.from_meta(meta)
    assert info.value.reason == "bad-release"


@pytest.mark.parametrize("ref", ["", "Upper/App:1", "app name:1", "app@" + D1, "app:-x"])
def test_image_facts_refuse_a_ref_that_is_no_image_name(ref: str) -> None:
    with pytest.raises(MalformedBundle) as info:
        ImageFacts.from_meta({**FACTS, "ref": ref})
    assert info.value.reason == "bad-release"


@pytest.mark.parametrize("text, where", [
    ('typo = 1\n', "outpost.toml"),
    ('[[images]]\nref = "a:1"\ntag = "x"\n', "images[0]"),
    ('[[images]]\nref = "a:1"\n[apply]\napplier = "command"\ncommand = ["x"]\nhelth = 1\n',
     "apply"),
    ('[[images]]\nref = "a:1"\n[[services]]\nname = "a"\nimage = "a:1"\nport = []\n',
     "services[0]"),
    ('[[images]]\nref = "a:1"\n[[services]]\nname = "a"\nimage = "a:1"\n'
     '[services.health]\nretry = 3\n', "services[0].health"),
])
def test_a_misspelt_key_is_refused_not_ignored(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(where)}: unknown key"):
        parse_release_config(text)
