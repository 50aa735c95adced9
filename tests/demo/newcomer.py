"""A newcomer's machine, as far as one test can make it: a fresh clone, an ordinary user, no MySQL.

* **Fresh clone**: ``git clone`` of this repository's committed ``HEAD`` into a new directory (what
  is not committed is not tested, as for anyone who clones).
* **Ordinary user**: under root (CI) a system user ``upstoxdemo`` is created once and every command
  runs as that user through ``setpriv`` (which execs, so signals reach the demo itself), with an
  empty ``HOME`` of its own (empty pip cache); otherwise the current, already unprivileged, user.
* **No MySQL headers, no compiler**: ``pkg-config``, ``mysql_config``, ``mariadb_config``, ``cc``
  and ``gcc`` on the ``PATH`` are shims that find nothing and fail, so anything that tries to build
  ``mysqlclient`` (or any C extension) fails as on a bare laptop.
* A minimal environment (``env -i``): ``HOME``, ``PATH``, ``LANG``, and the ``PIP_*`` settings of
  this machine (index and certificates; a laptop has its own).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER = "upstoxdemo"
SHIMS = ("pkg-config", "mysql_config", "mariadb_config", "cc", "gcc", "x86_64-linux-gnu-gcc")


@dataclass
class Newcomer:
    """The clone and the user that runs commands in it."""

    root: Path
    clone: Path
    home: Path
    shims: Path
    uid: int
    gid: int

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.shims}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **{key: value for key, value in os.environ.items() if key.startswith("PIP_")},
        }
        env.update(extra)
        return env

    def argv(self, *command: str, **extra_env: str) -> list[str]:
        """*command* as the newcomer: ``setpriv`` to its uid (when root), a minimal environment."""
        switch: list[str] = []
        if os.geteuid() == 0 and self.uid != 0:
            switch = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        env_args = [f"{key}={value}" for key, value in self.env(**extra_env).items()]
        return [*switch, "env", "-i", *env_args, *command]

    def run(self, *command: str, timeout: float, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command, **extra_env),
            cwd=self.clone, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, *command: str, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv(*command, **extra_env), cwd=self.clone, stdout=out, stderr=subprocess.STDOUT
            )

    def pids(self) -> list[int]:
        """Processes running as the newcomer's uid (meaningful when it is a dedicated user)."""
        return [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _uid_of(entry) == self.uid
        ]


def _uid_of(proc_entry: Path) -> int | None:
    try:
        return proc_entry.stat().st_uid
    except OSError:
        return None


def _ensure_user() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        # exit code 9: created meanwhile by a parallel run
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", USER],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode in (0, 9), result.stderr
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def make_newcomer() -> Newcomer:
    uid, gid = _ensure_user()
    root = Path(tempfile.mkdtemp(prefix="upstox-newcomer-"))
    root.chmod(0o755)  # mkdtemp makes it 0700: the user must reach its clone
    clone, home, shims = root / "airflow-provider-upstox", root / "home", root / "shims"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    home.mkdir()
    shims.mkdir()
    for tool in SHIMS:
        shim = shims / tool
        shim.write_text(
            "#!/bin/sh\n# finds nothing, builds nothing: a laptop without MySQL headers\nexit 1\n"
        )
        shim.chmod(0o755)
    for path in (clone, home):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, uid, gid)
    return Newcomer(root=root, clone=clone, home=home, shims=shims, uid=uid, gid=gid)


def remove(newcomer: Newcomer) -> None:
    shutil.rmtree(newcomer.root, ignore_errors=True)
