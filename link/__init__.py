"""link-sim: a simulated DTN-style link between two Outpost node homes.

    plan.py      contact plans: parse the text format, answer "is the link up at t?"
    model.py     what happens to one file on one direction of the link (pure, no I/O)
    profiles.py  built-in and TOML link profiles (lan, geo-satellite, moon, mars, ...)
    state.py     link-sim's state directory: in-flight files and their JSON sidecars
    sim.py       the polling loop that moves files between the homes
    cli.py       the `link-sim` command

See docs/link-sim.md.
"""
