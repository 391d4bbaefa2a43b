"""The outpost gateway: imports received images into the local registry."""
