"""A throw-away Dovecot IMAP server (Debian `dovecot-imapd`) for the e-mail tests and bench.email.

Its own config, passwd-file user and Maildir under a fresh temporary directory, on a free
loopback port; nothing system-wide is touched (see ../shared/notes/dovecot-for-tests.md).
Dovecot refuses mail access as root, so the mail user is `nobody`, and the directory is made
traversable for it (pytest's own temporary directories are private to root).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import aioimaplib

from channels.email.imap import Mailbox
from tests.smtp_peer import self_signed_certificate

LOOPBACK = "127.0.0.1"
NOBODY = 65534


class DovecotMissing(RuntimeError):
    """The `dovecot` binary is not installed (Debian package `dovecot-imapd`)."""


def dovecot_binary() -> str:
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found is None:
        raise DovecotMissing("dovecot is not installed (apt-get install dovecot-imapd)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


_CONFIG = """\
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
  }}
}}
"""


@dataclass(frozen=True)
class Dovecot:
    root: Path
    port: int
    user: str = "support"
    password: str = "imap-test-secret"
    host: str = LOOPBACK
    # With TLS (IMAPS on `port`): the self-signed certificate a client must trust.
    certificate: Path | None = None

    @classmethod
    def start(cls, *, tls: bool = False) -> Dovecot:
        binary = dovecot_binary()
        root = Path(tempfile.mkdtemp(prefix="switchboard-dovecot-"))
        root.chmod(0o755)
        ssl_settings, certificate = "ssl = no", None
        if tls:
            certificate, key = self_signed_certificate(root)
            ssl_settings = f"ssl = required\nssl_cert = <{certificate}\nssl_key = <{key}"
        server = cls(root=root, port=_free_port(), certificate=certificate)
        home = root / "home"
        (home / "Maildir").mkdir(parents=True)
        for path in (home, home / "Maildir"):
            os.chown(path, NOBODY, NOBODY)
        (root / "passwd").write_text(
            f"{server.user}:{{PLAIN}}{server.password}:{NOBODY}:{NOBODY}::{home}::\n"
        )
        ports = {"imaps_port": server.port, "imap_port": 0} if tls else {
            "imap_port": server.port, "imaps_port": 0,
        }  # fmt: skip
        (root / "dovecot.conf").write_text(
            _CONFIG.format(host=server.host, root=root, ssl=ssl_settings, **ports)
        )
        subprocess.run([binary, "-c", str(server.config)], check=True, timeout=30)
        server._wait_listening()
        return server

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    def _wait_listening(self, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        log = (self.root / "dovecot.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"dovecot did not listen on {self.port}:\n{log}")

    def stop(self) -> None:
        subprocess.run([dovecot_binary(), "-c", str(self.config), "stop"], check=False, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def mailbox(self, name: str = "support", **settings: object) -> Mailbox:
        """A configured mailbox reading this server, as SWITCHBOARD_MAILBOXES would give it."""
        mailbox = Mailbox(
            name=name,
            host=self.host,
            port=self.port,
            tls=self.certificate is not None,
            ca_file=str(self.certificate) if self.certificate else None,
            username=self.user,
            password=self.password,
            address="support@switchboard.example",
        )
        return replace(mailbox, **settings)  # type: ignore[arg-type]

    async def connect(self) -> aioimaplib.IMAP4:
        if self.certificate is not None:
            context = ssl.create_default_context(cafile=str(self.certificate))
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=self.host, port=self.port, timeout=30, ssl_context=context
            )
        else:
            client = aioimaplib.IMAP4(host=self.host, port=self.port, timeout=30)
        await client.wait_hello_from_server()
        response = await client.login(self.user, self.password)
        assert response.result == "OK", response
        return client

    async def append(self, messages: Iterable[bytes], folder: str = "INBOX") -> None:
        client = await self.connect()
        try:
            for message in messages:
                response = await client.append(message, mailbox=folder)
                assert response.result == "OK", response
        finally:
            await client.logout()

    async def command(self, name: str, *args: str) -> None:
        """One simple command on a fresh connection (CREATE, DELETE, …)."""
        client = await self.connect()
        try:
            response = await getattr(client, name.lower())(*args)
            assert response.result == "OK", response
        finally:
            await client.logout()

    async def uids(self, folder: str = "INBOX", criteria: str = "ALL") -> list[int]:
        client = await self.connect()
        try:
            response = await client.select(folder)
            assert response.result == "OK", response
            found = await client.uid_search(criteria)
            return [int(n) for n in found.lines[0].split()]
        finally:
            await client.logout()
