"""`python -m safe_data ARGS`: exec the `safe-data` binary of this environment.

This is what the pip-installed kernelspec runs (`python -I -m safe_data kernel
--connection-file F`). It costs one Python start-up (-I: no PYTHON* variables,
no user site-packages, not the current folder on sys.path, so a file in the
notebooks folder cannot stand in for this module) and imports nothing beyond
what the interpreter loads at start-up.

A `kernel` command without --config or --service gets its source here, in this
order (the variables come from the Jupyter server's environment, e.g. a
JupyterHub spawner's `environment`):

1. SAFE_DATA_SERVICE=SOCKET: `--service SOCKET` (the data service);
2. SAFE_DATA_CONFIG=FILE: `--config FILE` (the owner's configuration, opened by
   the kernel itself);
3. the file {sys.prefix}/etc/safe-data/safe-data.toml, if it exists: `--config`.
"""

import os
import sys

BINARY = "safe-data"
WELL_KNOWN = ("etc", "safe-data", "safe-data.toml")


def binary():
    """The binary pip installed into this environment's scripts folder."""
    here = os.path.join(os.path.dirname(sys.executable), BINARY)
    if os.access(here, os.X_OK):
        return here
    # A Python whose scripts folder is not next to it (rare on Linux).
    import sysconfig

    there = os.path.join(sysconfig.get_path("scripts"), BINARY)
    if os.access(there, os.X_OK):
        return there
    sys.exit(f"safe_data: the {BINARY} binary is neither at {here} nor at {there}; reinstall the safe-data wheel into this environment")


def source(args):
    """The --service/--config arguments to add to `kernel` ARGS, if any."""
    if args[:1] != ["kernel"] or any(a in ("--config", "--service") or a.startswith(("--config=", "--service=")) for a in args):
        return []
    service = os.environ.get("SAFE_DATA_SERVICE", "")
    config = os.environ.get("SAFE_DATA_CONFIG", "")
    if service and config:
        sys.exit("safe_data: both SAFE_DATA_SERVICE and SAFE_DATA_CONFIG are set; set one")
    if service:
        return ["--service", service]
    if config:
        return ["--config", config]
    default = os.path.join(sys.prefix, *WELL_KNOWN)
    if os.path.isfile(default):
        return ["--config", default]
    sys.exit(
        "safe_data: the kernel has no data source: set SAFE_DATA_SERVICE (the data service's socket) or "
        f"SAFE_DATA_CONFIG (the owner's configuration) in the Jupyter server's environment, or put the configuration at {default}"
    )


def main():
    exe = binary()
    args = sys.argv[1:]
    args = args + source(args)
    os.execv(exe, [exe, *args])


if __name__ == "__main__":
    main()
