"""`python -m link` runs link-sim."""

from .cli import main

main()
