"""Releases: outpost.toml, the config repo and its mirror, and the release manifest."""
