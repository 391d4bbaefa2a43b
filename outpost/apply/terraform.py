"""The `terraform` applier: `terraform init` and `terraform apply` in the release's
Terraform folder (`[apply] workdir` of a checkout of the release commit).

Never the network: Terraform runs with a CLI config (HOME/terraform/terraformrc) whose
only provider source is the outpost's own mirror, which holds the providers the release's
lock file pins (they cross the link as `provider` bundles; the release is not ready until
they are in), and `init -lockfile=readonly` refuses anything the lock file does not name.
The state stays in the home across releases (HOME/terraform/state/terraform.tfstate, set
by a backend override file written into the checkout), never in the checkout.

Variables: TF_VAR_registry, TF_VAR_release, TF_VAR_commit, besides what the `command`
applier gives (command.py); SSL_CERT_FILE is the outpost's CA when its registry serves TLS
(docs/registry-tls.md). Output goes to the release's log as Terraform's readable
messages; the plan summary (added, changed, destroyed) is kept with the apply. A failed
apply is rolled back by applying the previous release's commit with the same state.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ApplyFailed, ConfigError, GitError
from ..fsutil import atomic_write_bytes
from ..gateway.registry import registry_ca_file
from ..home import Home, OutpostSettings
from ..release import git
from ..release.config import parse_release_config
from ..units import format_duration
from .command import check_out, failure, keep_only_checkout, release_env
from .context import Job, Paths
from .process import kill_leftover, run_logged

OVERRIDE = "zz_outpost_backend_override.tf"


class TerraformApplier:
    name = "terraform"

    def __init__(self, settings: OutpostSettings, paths: Paths, stop: threading.Event) -> None:
        self.settings, self.paths, self.stop = settings, paths, stop
        self.root = paths.home.terraform

    def prepare(self, job: Job) -> None:
        kill_leftover(job.plan.get("process"))
        job.record(workdir=str(self._checkout(job.commit, job.config.apply.workdir)))

    def switch(self, job: Job) -> None:
        summary = self._apply(job, job.commit, Path(job.plan["workdir"]))
        job.record(terraform=summary)

    def check(self, job: Job) -> None:
        """Terraform's exit status is its check."""

    def commit(self, job: Job) -> None:
        keep_only_checkout(self.paths, job.commit)

    def rollback(self, job: Job) -> bool:
        """Apply the previous release's commit again, with the same state."""
        previous = job.row.previous
        if previous is None:
            return False
        try:
            config = parse_release_config(git.show(self.paths.mirror, previous, "outpost.toml"))
        except (ConfigError, GitError) as e:
            raise ApplyFailed(f"cannot read release {previous[:12]} to go back to: {e}") from None
        if config.apply.applier != self.name:
            job.log.line(f"release {previous[:12]} was not applied with terraform: nothing to "
                         "go back to with it")
            return False
        job.log.line(f"rolling back: applying release {previous[:12]} again, same state")
        kill_leftover(job.plan.get("process"))
        workdir = self._checkout(previous, config.apply.workdir)
        summary = self._apply(job, previous, workdir)
        job.record(terraform={**job.plan.get("terraform", {}), "rollback": summary})
        return True

    # running terraform
    def _checkout(self, commit: str, workdir_name: str) -> Path:
        workdir = check_out(self.paths, commit, workdir_name)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        backend = ('terraform {\n  backend "local" {\n'
                   f'    path = {json.dumps(str(self.state_file))}\n  }}\n}}\n')
        (workdir / OVERRIDE).write_text(backend)
        return workdir

    def _apply(self, job: Job, commit: str, workdir: Path) -> dict[str, Any]:
        """`terraform init`, then `terraform apply`; the apply's change summaries."""
        env = self._env(job, commit)
        deadline = time.monotonic() + job.config.apply.timeout
        lock = f"-lock-timeout={int(self.settings.terraform_lock_timeout)}s"
        self._run(job, ["init", "-input=false", "-no-color", "-reconfigure",
                        "-lockfile=readonly", lock], workdir, env, deadline, None)
        summary: dict[str, Any] = {}
        self._run(job, ["apply", "-auto-approve", "-input=false", lock, "-json"], workdir,
                  env, deadline, summary)
        return summary

    def _run(self, job: Job, args: list[str], workdir: Path, env: dict[str, str],
             deadline: float, summary: dict[str, Any] | None) -> None:
        cmd = [self.settings.terraform, *args]
        left = max(deadline - time.monotonic(), 1.0)
        job.log.line(f"$ {' '.join(cmd)}   (in {workdir}, {format_duration(left)} left)")
        lines = None if summary is None else JsonLines(summary)
        code, output = run_logged(job, cmd, str(workdir), env, left, self.stop, lines)
        if code != 0:
            raise failure(f"terraform {args[0]}", code, output)

    def _env(self, job: Job, commit: str) -> dict[str, str]:
        cli_config = self.root / "terraformrc"
        atomic_write_bytes(cli_config, cli_config_text(self.paths.home).encode())
        self.paths.home.provider_mirror.mkdir(parents=True, exist_ok=True)
        ca = registry_ca_file(self.settings, self.paths.home.path)
        # The docker provider checks the registry's certificate against SSL_CERT_FILE.
        tls = {"SSL_CERT_FILE": str(ca)} if ca is not None else {}
        return {**release_env(self.settings, self.paths, job, commit), **tls,
                "TF_CLI_CONFIG_FILE": str(cli_config), "TF_DATA_DIR": str(self.root / "data"),
                "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1",
                "TF_VAR_registry": self.settings.registry or "",
                "TF_VAR_release": commit[:12], "TF_VAR_commit": commit}

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "terraform.tfstate"


def cli_config_text(home: Home) -> str:
    """Providers from the outpost's own mirror only: no `direct` source, so no network."""
    return ("provider_installation {\n  filesystem_mirror {\n"
            f"    path = {json.dumps(str(home.provider_mirror))}\n  }}\n}}\n")


class JsonLines:
    """Terraform's `-json` lines to the log as its readable messages (errors with their
    detail), keeping each change summary ("plan", "apply") in `summary`."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary

    def __call__(self, line: str) -> str | None:
        try:
            event = json.loads(line)
        except ValueError:
            return line
        if not isinstance(event, dict):
            return line
        changes = event.get("changes")
        if event.get("type") == "change_summary" and isinstance(changes, dict):
            self.summary[str(changes.get("operation", "apply"))] = {
                k: changes.get(k, 0) for k in ("add", "change", "remove", "import")}
        text = str(event.get("@message", ""))
        diagnostic = event.get("diagnostic")
        if isinstance(diagnostic, dict) and diagnostic.get("detail"):
            text += ": " + " ".join(str(diagnostic["detail"]).split())
        return text or None
