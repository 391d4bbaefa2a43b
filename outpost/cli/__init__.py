"""Command line: `outpost-node` (see docs/cli.md)."""
