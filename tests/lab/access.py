"""How the controller reaches the lab's hosts: SSH as a non-root sudo user, as a fleet is reached.

Made once per lab state directory (``<state>/ssh``, mode 0700, private files 0600) and baked into
the spark-sim image, so that the image's recipe hash changes with them:

- ``id_ed25519`` / ``id_ed25519.pub``: the key pair the controller logs in with; the public key is
  in ``~/.ssh/authorized_keys`` of both lab users.
- ``become-password.vault``: the sudo password of :attr:`LabConfig.sudo_password_user`, encrypted
  with ``ansible-vault`` (the plaintext is written nowhere); ``inventory/lab`` reads it with the
  ``ansible.builtin.unvault`` lookup into ``ansible_become_password``.
- ``vault-password``: the vault password (pass it as ``--vault-password-file``).
- ``become-password.sha512``: the password's crypt(3) hash, as ``/etc/shadow`` holds it.

Users in the image (``spark-sim/Dockerfile``): the password user is in group ``sudo``, whose
sudoers rule (``%sudo ALL=(ALL:ALL) ALL``, as on Ubuntu 24.04 and Debian 13) asks for the password;
the other has ``NOPASSWD: ALL`` in ``/etc/sudoers.d``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from tests.lab.config import LabConfig, log, venv_tool

KEY_NAME = "id_ed25519"
VAULT_FILE = "become-password.vault"
VAULT_PASSWORD_FILE = "vault-password"
HASH_FILE = "become-password.sha512"

# Options the lab's SSH connections use. Hosts are recreated at every run under addresses that
# other hosts had before, so their host keys are not recorded (a real fleet keeps known_hosts).
# Keep-alives make a dropped connection fail in seconds instead of hanging.
SSH_COMMON_ARGS = (
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
    "-o IdentitiesOnly=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=6"
)


def _write_private(path: Path, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)


def ensure_access(cfg: LabConfig) -> Path:
    """Create the key pair and the vaulted become password once; returns the ssh directory."""
    ssh = cfg.ssh_dir
    ssh.mkdir(parents=True, exist_ok=True)
    ssh.chmod(0o700)
    key = ssh / KEY_NAME
    if not key.is_file():
        log(f"creating the lab's SSH key pair {key}")
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sparklab-controller",
             "-f", str(key)],
            check=True,
        )  # fmt: skip
    vault = ssh / VAULT_FILE
    if not (vault.is_file() and (ssh / HASH_FILE).is_file()):
        log(f"creating the sudo password of {cfg.sudo_password_user}, kept in ansible-vault")
        password = secrets.token_urlsafe(18)
        _write_private(ssh / VAULT_PASSWORD_FILE, secrets.token_urlsafe(24) + "\n")
        subprocess.run(
            [venv_tool("ansible-vault"), "encrypt",
             "--vault-password-file", str(ssh / VAULT_PASSWORD_FILE), "--output", str(vault), "-"],
            input=password,
            text=True,
            check=True,
            capture_output=True,
        )  # fmt: skip
        vault.chmod(0o600)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password,
            text=True,
            check=True,
            capture_output=True,
        ).stdout.strip()
        _write_private(ssh / HASH_FILE, hashed + "\n")
    return ssh


def public_key(cfg: LabConfig) -> str:
    """The controller's public key line."""
    return (cfg.ssh_dir / f"{KEY_NAME}.pub").read_text().strip()


def password_hash(cfg: LabConfig) -> str:
    """crypt(3) hash of the sudo password user's password."""
    return (cfg.ssh_dir / HASH_FILE).read_text().strip()


def ssh_command(cfg: LabConfig, address: str, user: str | None = None) -> list[str]:
    """``ssh`` argv (without the remote command) that logs in to a lab host as a lab user."""
    return [
        "ssh", "-i", str(cfg.ssh_dir / KEY_NAME), *SSH_COMMON_ARGS.split(),
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        f"{user or cfg.sudo_password_user}@{address}",
    ]  # fmt: skip


def become_password_lookup(cfg: LabConfig) -> str:
    """``ansible_become_password`` value that decrypts the vaulted password at run time."""
    return f"{{{{ lookup('ansible.builtin.unvault', '{cfg.ssh_dir / VAULT_FILE}') | trim }}}}"


def ansible_host_vars(cfg: LabConfig, address: str, *, sudo_password: bool) -> dict[str, object]:
    """Host variables that reach a lab host over SSH as a non-root sudo user.

    ``sudo_password``: log in as :attr:`LabConfig.sudo_password_user` (sudo asks for the vaulted
    password: run with ``--vault-password-file`` :func:`vault_password_file`), else as
    :attr:`LabConfig.sudo_nopasswd_user`.
    """
    found: dict[str, object] = {
        "ansible_connection": "ssh",
        "ansible_host": address,
        "ansible_port": 22,
        "ansible_user": cfg.sudo_password_user if sudo_password else cfg.sudo_nopasswd_user,
        "ansible_ssh_private_key_file": str(cfg.ssh_dir / KEY_NAME),
        "ansible_ssh_common_args": SSH_COMMON_ARGS,
    }
    if sudo_password:
        found["ansible_become_password"] = become_password_lookup(cfg)
    return found


def vault_password_file(cfg: LabConfig) -> Path:
    """The file holding the lab's vault password."""
    return cfg.ssh_dir / VAULT_PASSWORD_FILE
