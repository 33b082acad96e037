"""sshd on rig hosts, so `ray up` reaches them as it reaches machines: user `ray` with a key, a login shell
that finds ray and ray-ha, a default route (Ray picks its node IP by one), and /tmp/home as home.

sshd runs as the unprivileged user itself, in a user namespace of its own inside the host's (uid 2000):
an sshd that is not root needs no privilege separation and never calls setgroups(), which a user namespace
made without root refuses. So this works for a plain user as for root. The host's /run becomes its own
tmpfs (sshd's /run/sshd), and /etc/passwd and /etc/group gain `ray` and lose the `tty` group (sshd then
gives a pty to the user's own group) by bind mounts visible on that host only. sshd, ssh, ssh-keygen and
rsync are the machine's where it has them, else fetched (testkit.sshtools); the hosts' login shell and
`environ` put the fetched ones first on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from testkit.hosts import Host, HostProcess
from testkit.sshtools import SshTools

USER, UID = "ray", 2000
HOME = "/tmp/home"


class SshHosts:
    """The keys and files every host's sshd shares (in `workdir`), and each host's sshd; `env` is the
    environment of the hosts' login shell. Raises testkit.debian.Unavailable if a tool can be neither
    found nor fetched."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.dir = Path(workdir) / "ssh"
        self.dir.mkdir(parents=True)
        self.tools = SshTools(self.dir / "tools")
        for name in ("hostkey", "userkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True,
                           env=self.environ(os.environ))
        (self.dir / "authorized_keys").write_text((self.dir / "userkey.pub").read_text())
        (self.dir / "passwd").write_text(Path("/etc/passwd").read_text()
                                         + f"{USER}:x:{UID}:{UID}:{USER}:{HOME}:/bin/bash\n")
        (self.dir / "group").write_text("".join(line for line in Path("/etc/group").read_text().splitlines(True)
                                                if not line.startswith("tty:")) + f"{USER}:x:{UID}:\n")
        self.bashrc = "".join(f"export {k}={_quote(v)}\n" for k, v in self.environ(env).items())

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` for running ssh and rsync: the fetched ones (if any) first on PATH."""
        return self.tools.environ(env)

    @property
    def key(self) -> Path:
        """The private key that logs in as `ray` on every host."""
        return self.dir / "userkey"

    def prepare(self, host: Host) -> None:
        """Make `host` a machine sshd can serve (once per host; it lasts while the host does)."""
        host.run(["mount", "-t", "tmpfs", "tmpfs", "/run"])
        host.run(["mkdir", "-m", "755", "/run/sshd"])
        for name in ("passwd", "group"):
            host.run(["mount", "--bind", str(self.dir / name), f"/etc/{name}"])
        host.run(["sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=22"])
        host.run(["ip", "route", "add", "default", "dev", "eth0"])
        host.run(["mkdir", "-p", HOME])
        host.run([sys.executable, "-c", f"open({HOME + '/.bashrc'!r}, 'w').write({self.bashrc!r})"])
        (self.dir / f"{host.name}.conf").write_text(
            f"ListenAddress {host.ip}\nHostKey {self.dir / 'hostkey'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPidFile none\n"
            "MaxStartups 100\nMaxSessions 100\nLogLevel INFO\n")

    def start(self, host: Host) -> HostProcess:
        """Start sshd on `host` (again, after its processes were killed); its log is `log(host)`."""
        sshd = self.tools.sshd
        with open(self.log_path(host), "ab") as out:
            server = host.popen(["unshare", "--user", f"--map-user={UID}", f"--map-group={UID}", sshd.path,
                                 "-D", "-e", "-f", str(self.dir / f"{host.name}.conf")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **sshd.env})
        return server

    def log_path(self, host: Host) -> Path:
        return self.dir / f"{host.name}.sshd.log"

    def logins_from(self, host: Host, ip: str) -> int:
        """How many SSH logins `host` accepted from `ip` so far."""
        path = self.log_path(host)
        text = path.read_text(errors="replace") if path.exists() else ""
        return text.count(f"Accepted publickey for {USER} from {ip} ")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
