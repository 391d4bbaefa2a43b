"""Terraform providers carried across the link (docs/terraform.md).

    lockfile.py   `.terraform.lock.hcl`: which provider versions a release needs, and their
                  hashes (pure)
    package.py    a provider package: its identity, its files, Terraform's h1: hash (pure)
    mirror.py     where packages are found at Earth (the layouts of `terraform providers
                  mirror` and -plugin-dir) and installed at the outpost (its own mirror)
"""
