"""OS accounts for the multi-user tests (issue 11): a service account and two
scientists. CI runs as root and creates them; elsewhere the tests that need
them skip with a visible reason."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess

import pytest

SERVICE = "sd-service"
ALICE = "sd-alice"
BOB = "sd-bob"
SCIENTISTS = "sd-scientists"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def ensure_accounts() -> None:
    """Creates the accounts if missing (idempotent); skips the calling test
    when not root or when `useradd` is unavailable."""
    if os.geteuid() != 0:
        pytest.skip("multi-user tests need root to create OS accounts (CI runs as root)")
    try:
        if not _group_exists(SCIENTISTS):
            subprocess.run(["groupadd", SCIENTISTS], check=True, capture_output=True)
        if not _user_exists(SERVICE):
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE], check=True, capture_output=True)
        # The service gives its socket to socket_group: it must be a member (docs/deploy.md).
        subprocess.run(["usermod", "--append", "--groups", SCIENTISTS, SERVICE], check=True, capture_output=True)
        for user in (ALICE, BOB):
            if not _user_exists(user):
                subprocess.run(["useradd", "--create-home", "--groups", SCIENTISTS, user], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create the test accounts: {e}")


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def as_user(name: str) -> list[str]:
    """A command prefix that runs the rest as `name` (with its groups)."""
    return ["setpriv", f"--reuid={uid(name)}", f"--regid={pwd.getpwnam(name).pw_gid}", "--init-groups", "--reset-env", "--"]
