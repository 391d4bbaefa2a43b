"""The template a new Earth config repo starts from: the project's example by default."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def template_sources(template: Path | None) -> list[tuple[Path, str]]:
    """(folder, place in the repo) pairs: `template` as the repo root, or the project's
    `example/` at the root plus its `terraform/` folder."""
    if template is not None:
        if not (template / "outpost.toml").is_file():
            raise ConfigError(f"template {template} has no outpost.toml")
        return [(template, ".")]
    root = project_root()
    example = root / "example"
    if not (example / "outpost.toml").is_file():
        raise ConfigError("the project's example template is not installed here; "
                          "pass --template DIR (a folder with an outpost.toml)")
    sources = [(example, ".")]
    if (root / "terraform").is_dir():
        sources.append((root / "terraform", "terraform"))
    return sources
