"""Applying releases at the outpost: a ready release becomes running services, checked,
rolled back if it is bad, and reported home (docs/apply.md).

    plan.py        the loop's rules, pure: which release next, resume or roll back after
                   a crash, when to ask Earth for a missing image
    missing.py     which images a failed command could not find (pure)
    spec.py        the docker applier's container specs and labels (pure)
    health.py      waiting for services to be healthy (probes and time passed in)
    context.py     settings, the job, the per-release log
    containers.py  the built-in `docker` applier (Docker SDK)
    process.py     running an applier's program: log, timeout, process group
    command.py     the `command` applier (a command in a checkout of the release)
    terraform.py   the `terraform` applier (init and apply, providers from the outpost's
                   own mirror, state in the home)
    runner.py      one apply, phase by phase, recorded in the node's state
    loop.py        the loop in the node (a worker thread), and applies by hand
"""
