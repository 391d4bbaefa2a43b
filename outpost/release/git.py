"""Git for the config: Earth's working repository and the outpost's fast-forward mirror.

GitPython for the repository, the git binary for bundles (GitPython has no bundle API).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import GitError, MalformedBundle, RefusedContent

BRANCH = "main"


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc


def seed_config_repo(path: Path, sources: list[tuple[Path, str]]) -> str:
    """Create Earth's config repo with one commit; returns its hash. Each (folder, place)
    of `sources` is copied to `path/place`. An existing repo is left as it is."""
    if (path / ".git").exists():
        return head(path)
    import git  # GitPython, only where a repository is created

    for folder, place in sources:
        shutil.copytree(folder, path / place, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "__pycache__", ".terraform"))
    repo = git.Repo.init(path, initial_branch=BRANCH)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Outpost Earth")
        cw.set_value("user", "email", "earth@outpost.invalid")
    repo.git.add(A=True)
    repo.index.commit("Initial configuration from the Outpost template")
    return head(path)


def head(repo: Path) -> str:
    proc = _git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise GitError(f"{repo} has no commit on {BRANCH} yet: commit the configuration first")
    return proc.stdout.strip()


def show(repo: Path, commit: str, path: str) -> str:
    proc = _git(repo, "show", f"{commit}:{path}", check=False)
    if proc.returncode != 0:
        raise GitError(f"{path} is not in commit {commit[:12]} of {repo}")
    return proc.stdout


def has_commit(repo: Path, commit: str) -> bool:
    return _git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def create_bundle(repo: Path, dest: Path, base: str | None) -> bool:
    """Write a bundle of `main` holding what `base` lacks (all history without a base).

    Returns False when there is nothing to send. A base this repo does not know (it was
    rewritten away) is left out, so the outpost receives the history and refuses it.
    """
    args = ["bundle", "create", str(dest.resolve()), BRANCH]
    if base is not None and has_commit(repo, base):
        if base == head(repo):
            return False
        args.append(f"^{base}")
    proc = _git(repo, *args, check=False)
    if proc.returncode != 0:
        if "empty bundle" in proc.stderr:
            return False
        raise GitError(f"git bundle create failed in {repo}: {proc.stderr.strip()}")
    return True


def init_mirror(path: Path) -> None:
    if not (path / "HEAD").exists():
        import git

        git.Repo.init(path, bare=True, initial_branch=BRANCH)


def mirror_head(path: Path) -> str | None:
    proc = _git(path, "rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}", check=False)
    return proc.stdout.strip() or None


def bundle_head(bundle: Path, cwd: Path) -> str | None:
    proc = _git(cwd, "bundle", "list-heads", str(bundle.resolve()), f"refs/heads/{BRANCH}",
                check=False)
    parts = proc.stdout.split()
    return parts[0] if proc.returncode == 0 and parts else None


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    proc = _git(repo, "merge-base", "--is-ancestor", older, newer, check=False)
    return proc.returncode == 0


def apply_bundle(mirror: Path, bundle: Path, expect: str) -> tuple[str | None, str]:
    """Fast-forward the mirror's main to `expect` from `bundle`; (old head, new head).

    Checked before anything changes: the bundle's main must be the release's commit, its
    prerequisites present (`git bundle verify`), and the move a fast-forward; otherwise
    RefusedContent, and the mirror stays as it was. A release older than the mirror's head
    (a late copy) changes nothing.
    """
    old = mirror_head(mirror)
    found = bundle_head(bundle, mirror)
    if found is None:
        raise RefusedContent(f"the config bundle is not a git bundle with a {BRANCH} branch",
                             reason="bad-git-bundle")
    if found != expect:
        raise RefusedContent(f"the config bundle's {BRANCH} is not the release's commit "
                             f"{expect[:12]}", reason="commit-mismatch")
    if old is not None and has_commit(mirror, expect) and is_ancestor(mirror, expect, old):
        return old, old
    verify = _git(mirror, "bundle", "verify", str(bundle.resolve()), check=False)
    if verify.returncode != 0:
        detail = " ".join(verify.stderr.strip().splitlines()[-2:])
        if "prerequisite" in detail or "requires" in detail:
            raise RefusedContent("the config bundle builds on commits this mirror lacks: "
                                 + detail, reason="missing-prerequisites")
        raise MalformedBundle(f"git bundle verify failed: {detail}", reason="bad-git-bundle")
    fetch = _git(mirror, "fetch", "--no-tags", str(bundle.resolve()),
                 f"refs/heads/{BRANCH}:refs/heads/{BRANCH}", check=False)
    if fetch.returncode != 0:
        if "non-fast-forward" in fetch.stderr or "rejected" in fetch.stderr:
            raise RefusedContent(f"the config bundle would rewrite history: {BRANCH} at "
                                 f"{(old or '')[:12]} is not an ancestor of {expect[:12]}",
                                 reason="history-rewrite")
        # It verified, so its pack is what Earth signed: a broken pack is Earth's fault.
        raise RefusedContent(f"git cannot read the config bundle: {fetch.stderr.strip()}",
                             reason="bad-git-bundle")
    return old, expect


def history(repo: Path, limit: int = 10_000) -> list[str]:
    """The commits of `main`, newest first (empty for a repo without commits)."""
    proc = _git(repo, "rev-list", f"--max-count={limit}", f"refs/heads/{BRANCH}", check=False)
    return proc.stdout.split() if proc.returncode == 0 else []


def checkout(repo: Path, commit: str, dest: Path) -> None:
    """A clean working tree of `commit` at `dest` (a worktree of `repo`, bare or not)."""
    if (dest / ".git").exists():
        _git(dest, "checkout", "-q", "--detach", "--force", commit)
        _git(dest, "clean", "-q", "-fdx")
        return
    shutil.rmtree(dest, ignore_errors=True)
    _git(repo, "worktree", "prune")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(repo, "worktree", "add", "-q", "--detach", "--force", str(dest.resolve()), commit)


def remove_checkout(repo: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    _git(repo, "worktree", "prune", check=False)
