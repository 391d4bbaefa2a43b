"""Config history with real git (outpost/release/git.py): Earth's repo, bundles, the mirror.

Every refusal must leave the mirror's refs exactly as they were.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from outpost.errors import BundleError, ConfigError, GitError, MalformedBundle, RefusedContent
from outpost.release import git
from outpost.release.template import project_root, template_sources


def run(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def commit(repo: Path, name: str, text: str, message: str | None = None) -> str:
    (repo / name).write_text(text)
    run(repo, "add", name)
    run(repo, "commit", "-qm", message or f"change {name}")
    return run(repo, "rev-parse", "HEAD").strip()


def refs(mirror: Path) -> str:
    """Everything a refusal must leave alone: every ref and where HEAD points."""
    return run(mirror, "for-each-ref") + run(mirror, "symbolic-ref", "HEAD")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    t = tmp_path / "template"
    (t / "terraform").mkdir(parents=True)
    (t / "outpost.toml").write_text('[apply]\napplier = "command"\ncommand = ["true"]\n')
    (t / "terraform" / "main.tf").write_text("# nothing\n")
    (t / "__pycache__").mkdir()
    (t / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (t / "terraform" / ".terraform").mkdir()
    (t / "terraform" / ".terraform" / "plugin").write_text("big binary\n")
    return t


@pytest.fixture
def repo(tmp_path: Path, template: Path) -> Path:
    path = tmp_path / "earth-config"
    git.seed_config_repo(path, template_sources(template))
    return path


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    path = tmp_path / "config.git"
    git.init_mirror(path)
    return path


# --- Earth's repo ---

def test_seed_makes_one_commit_with_the_template(tmp_path: Path, template: Path) -> None:
    path = tmp_path / "config"
    head = git.seed_config_repo(path, template_sources(template))
    assert head == git.head(path) == run(path, "rev-parse", "main").strip()
    assert run(path, "rev-list", "--count", "main").strip() == "1"
    assert run(path, "status", "--porcelain") == ""
    tracked = sorted(run(path, "ls-files").split())
    assert tracked == ["outpost.toml", "terraform/main.tf"]
    assert not (path / "__pycache__").exists()
    assert not (path / "terraform" / ".terraform").exists()
    assert git.show(path, head, "outpost.toml") == (template / "outpost.toml").read_text()


def test_seed_again_leaves_the_repo_alone(tmp_path: Path, template: Path) -> None:
    path = tmp_path / "config"
    first = git.seed_config_repo(path, template_sources(template))
    later = commit(path, "notes.txt", "operator's own commit\n")
    (template / "outpost.toml").write_text("# changed template\n")
    (template / "new.txt").write_text("new\n")
    assert git.seed_config_repo(path, template_sources(template)) == later != first
    assert run(path, "rev-list", "--count", "main").strip() == "2"
    assert not (path / "new.txt").exists()
    assert run(path, "status", "--porcelain") == ""


def test_default_template_is_the_project_example() -> None:
    sources = template_sources(None)
    root = project_root()
    assert sources[0] == (root / "example", ".")
    if (root / "terraform").is_dir():
        assert (root / "terraform", "terraform") in sources


def test_a_template_without_outpost_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outpost\.toml"):
        template_sources(tmp_path)


def test_show_of_a_missing_file(repo: Path) -> None:
    with pytest.raises(GitError, match=r"nope\.txt"):
        git.show(repo, git.head(repo), "nope.txt")


def test_head_of_a_repo_without_main_is_a_git_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run(empty, "init", "-q", "-b", "main")
    with pytest.raises(GitError, match="main"):
        git.head(empty)


# --- bundles ---

def test_full_bundle_holds_the_whole_history(tmp_path: Path, repo: Path, mirror: Path) -> None:
    c2 = commit(repo, "a.txt", "a\n")
    bundle = tmp_path / "full.bundle"
    assert git.create_bundle(repo, bundle, None)
    assert git.bundle_head(bundle, mirror) == c2
    assert "complete history" in run(mirror, "bundle", "verify", str(bundle))
    assert git.apply_bundle(mirror, bundle, c2) == (None, c2)
    assert git.mirror_head(mirror) == c2
    assert run(mirror, "rev-list", "--count", "main").strip() == "2"
    assert run(mirror, "show", f"{c2}:a.txt") == "a\n"


def test_incremental_bundle_fast_forwards(tmp_path: Path, repo: Path, mirror: Path) -> None:
    c1 = git.head(repo)
    first = tmp_path / "1.bundle"
    git.create_bundle(repo, first, None)
    git.apply_bundle(mirror, first, c1)
    commit(repo, "a.txt", "a\n")
    c3 = commit(repo, "b.txt", "b\n")
    inc = tmp_path / "2.bundle"
    assert git.create_bundle(repo, inc, c1)
    assert inc.stat().st_size < first.stat().st_size + 1024
    verify = run(mirror, "bundle", "verify", str(inc))
    assert "complete history" not in verify
    assert git.apply_bundle(mirror, inc, c3) == (c1, c3)
    assert git.mirror_head(mirror) == c3
    assert git.is_ancestor(mirror, c1, c3)


def test_nothing_new_makes_no_bundle(tmp_path: Path, repo: Path) -> None:
    bundle = tmp_path / "none.bundle"
    assert git.create_bundle(repo, bundle, git.head(repo)) is False
    assert not bundle.exists()


def test_an_unknown_base_sends_the_whole_history(tmp_path: Path, repo: Path,
                                                 mirror: Path) -> None:
    head = commit(repo, "a.txt", "a\n")
    bundle = tmp_path / "x.bundle"
    assert git.create_bundle(repo, bundle, "f" * 40)
    assert "complete history" in run(mirror, "bundle", "verify", str(bundle))
    assert git.apply_bundle(mirror, bundle, head) == (None, head)


def test_mirror_init_is_idempotent(mirror: Path, tmp_path: Path, repo: Path) -> None:
    head = git.head(repo)
    bundle = tmp_path / "b"
    git.create_bundle(repo, bundle, None)
    git.apply_bundle(mirror, bundle, head)
    git.init_mirror(mirror)
    assert git.mirror_head(mirror) == head
    assert git.mirror_head(tmp_path / "not-a-repo") is None


def test_mirror_head_of_an_empty_mirror_is_none(mirror: Path) -> None:
    assert git.mirror_head(mirror) is None


# --- applying: late copies, rewrites, mismatches, missing history, garbage ---

def test_an_older_bundle_is_a_no_op(tmp_path: Path, repo: Path, mirror: Path) -> None:
    c1 = git.head(repo)
    old = tmp_path / "old.bundle"
    git.create_bundle(repo, old, None)
    c2 = commit(repo, "a.txt", "a\n")
    new = tmp_path / "new.bundle"
    git.create_bundle(repo, new, None)
    git.apply_bundle(mirror, new, c2)
    before = refs(mirror)
    assert git.apply_bundle(mirror, old, c1) == (c2, c2)
    assert git.apply_bundle(mirror, new, c2) == (c2, c2)  # a duplicate, too
    assert refs(mirror) == before


def _rewrite(repo: Path) -> str:
    (repo / "notes.txt").write_text("rewritten\n")
    run(repo, "add", "notes.txt")
    run(repo, "commit", "-q", "--amend", "-m", "rewritten")
    return git.head(repo)


@pytest.mark.parametrize("earth_forgot_the_old_head", [False, True])
def test_a_rewrite_is_refused_and_the_mirror_unchanged(
        tmp_path: Path, repo: Path, mirror: Path, earth_forgot_the_old_head: bool) -> None:
    c1 = git.head(repo)
    c2 = commit(repo, "a.txt", "a\n")
    first = tmp_path / "1.bundle"
    git.create_bundle(repo, first, None)
    git.apply_bundle(mirror, first, c2)
    before = refs(mirror)
    rewritten = _rewrite(repo)
    if earth_forgot_the_old_head:
        run(repo, "reflog", "expire", "--expire=now", "--all")
        run(repo, "gc", "-q", "--prune=now")
        assert not git.has_commit(repo, c2)
    bundle = tmp_path / "2.bundle"
    assert git.create_bundle(repo, bundle, c2)
    with pytest.raises(RefusedContent) as info:
        git.apply_bundle(mirror, bundle, rewritten)
    assert info.value.reason == "history-rewrite"
    assert refs(mirror) == before
    assert git.mirror_head(mirror) == c2
    assert git.is_ancestor(mirror, c1, c2)


def test_a_bundle_that_is_not_the_release_commit_is_refused_first(
        tmp_path: Path, repo: Path, mirror: Path) -> None:
    c1 = git.head(repo)
    c2 = commit(repo, "a.txt", "a\n")
    bundle = tmp_path / "b.bundle"
    git.create_bundle(repo, bundle, None)
    with pytest.raises(RefusedContent) as info:
        git.apply_bundle(mirror, bundle, "e" * 40)
    assert info.value.reason == "commit-mismatch"
    assert git.mirror_head(mirror) is None
    assert not git.has_commit(mirror, c2), "objects were fetched before the check"
    git.apply_bundle(mirror, bundle, c2)
    before = refs(mirror)
    with pytest.raises(RefusedContent) as info:
        git.apply_bundle(mirror, bundle, c1)
    assert info.value.reason == "commit-mismatch"
    assert refs(mirror) == before


def test_missing_prerequisites_are_refused(tmp_path: Path, repo: Path, mirror: Path) -> None:
    c1 = git.head(repo)
    c2 = commit(repo, "a.txt", "a\n")
    inc = tmp_path / "inc.bundle"
    git.create_bundle(repo, inc, c1)
    before = refs(mirror)
    with pytest.raises(RefusedContent) as info:
        git.apply_bundle(mirror, inc, c2)
    assert info.value.reason == "missing-prerequisites"
    assert refs(mirror) == before and git.mirror_head(mirror) is None


def test_missing_prerequisites_on_a_mirror_of_another_history(
        tmp_path: Path, repo: Path, mirror: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "outpost.toml").write_text("# another site's history\n")
    other = tmp_path / "other"
    git.seed_config_repo(other, template_sources(elsewhere))
    o2 = commit(other, "other.txt", "other\n")
    full = tmp_path / "other.bundle"
    git.create_bundle(other, full, None)
    git.apply_bundle(mirror, full, o2)
    before = refs(mirror)
    c1 = git.head(repo)
    c2 = commit(repo, "a.txt", "a\n")
    inc = tmp_path / "inc.bundle"
    git.create_bundle(repo, inc, c1)
    with pytest.raises(RefusedContent) as info:
        git.apply_bundle(mirror, inc, c2)
    assert info.value.reason == "missing-prerequisites"
    assert refs(mirror) == before


@pytest.mark.parametrize("content", [b"", b"garbage\n" * 100,
                                     b"# v2 git bundle\nnot a ref line\n\nPACK"])
def test_a_garbage_bundle_is_refused_and_the_mirror_unchanged(
        tmp_path: Path, repo: Path, mirror: Path, content: bytes) -> None:
    head = git.head(repo)
    good = tmp_path / "good.bundle"
    git.create_bundle(repo, good, None)
    git.apply_bundle(mirror, good, head)
    before = refs(mirror)
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(content)
    # The code reads the bundle's head first: a file that is no bundle has none, so it is
    # refused as a commit mismatch before `git bundle verify` would call it bad-git-bundle.
    with pytest.raises((RefusedContent, MalformedBundle)) as info:
        git.apply_bundle(mirror, garbage, "d" * 40)
    assert info.value.reason in ("commit-mismatch", "bad-git-bundle")
    assert refs(mirror) == before


@pytest.mark.parametrize("damage", ["cut-in-half", "garbage-pack"])
def test_a_bundle_with_a_bad_pack_is_refused_as_the_peers_fault(
        tmp_path: Path, repo: Path, mirror: Path, damage: str) -> None:
    (repo / "big.bin").write_bytes(bytes(range(256)) * 400)
    run(repo, "add", "big.bin")
    run(repo, "commit", "-qm", "big")
    head = git.head(repo)
    bundle = tmp_path / "full.bundle"
    git.create_bundle(repo, bundle, None)
    bad = tmp_path / "bad.bundle"
    if damage == "cut-in-half":
        bad.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    else:
        bad.write_bytes(f"# v2 git bundle\n{head} refs/heads/main\n\nPACKgarbage".encode())
    assert git.bundle_head(bad, mirror) == head
    try:
        with pytest.raises(BundleError) as info:
            git.apply_bundle(mirror, bad, head)
        assert info.value.reason == "bad-git-bundle"
    finally:
        assert git.mirror_head(mirror) is None
