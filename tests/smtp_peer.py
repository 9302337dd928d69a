"""A real SMTP server for the tests (aiosmtpd on a free loopback port) that keeps what it got.

It answers like a mail server would, and can be told to refuse: `refuse_next("451 4.3.0 …")`
makes the next DATA commands fail with that reply (a greylisting server, a full disk, a
`550` for an unknown mailbox). `hold()` keeps the next message waiting until `release()`, to
catch the gateway mid-send.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections import deque
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from channels.email.outbound import SmtpAccount, SmtpTls

SUPPORT = "Example Support <support@example.com>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed for the SMTP TLS tests")
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class SmtpPeer:
    """`tls`: None (plain), "starttls" (required before mail) or "tls" (from the first byte),
    with `certificate` = (cert file, key file)."""

    def __init__(
        self,
        credentials: tuple[str, str] | None = None,
        tls: str | None = None,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refusals: deque[str] = deque()
        self.attempts = 0
        self._credentials = credentials
        self._hold_next = False
        self._gate = threading.Event()
        self.held = threading.Event()
        self.port = free_port()
        options: dict[str, Any] = {}
        if credentials is not None:
            # aiosmtpd cannot tell that a TLS-from-the-first-byte session is encrypted; only
            # STARTTLS sessions can be held to it.
            require_tls = tls == "starttls"
            options = {"authenticator": self._authenticate, "auth_require_tls": require_tls}
        if tls is not None:
            assert certificate is not None, "TLS needs a certificate"
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*certificate)
            if tls == "starttls":
                options.update(tls_context=context, require_starttls=True)
            else:
                options.update(ssl_context=context)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.release()
        self._controller.stop()

    def refuse_next(self, reply: str, times: int = 1) -> None:
        self.refusals.extend([reply] * times)

    def hold(self) -> None:
        self._gate.clear()
        self._hold_next = True

    def release(self) -> None:
        self._gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.refusals:
            return self.refusals.popleft()
        if self._hold_next:
            self._hold_next = False
            self.held.set()
            await asyncio.get_running_loop().run_in_executor(None, self._gate.wait)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message_from_bytes(envelope.content, policy=default))  # type: ignore[arg-type]
        return "250 2.0.0 Ok: queued"

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self._credentials
        )
        # Not `handled`: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False)

    async def wait_for(self, count: int, within: float = 15.0) -> list[EmailMessage]:
        """The messages once at least `count` have arrived."""
        async with asyncio.timeout(within):
            while len(self.messages) < count:  # noqa: ASYNC110 - filled by the server's thread
                await asyncio.sleep(0.02)
        return self.messages

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]


def account_for(peer: SmtpPeer) -> SmtpAccount:
    """Our sending account on this peer: plain SMTP on loopback, From our support address."""
    return SmtpAccount("127.0.0.1", peer.port, SUPPORT, tls=SmtpTls.NONE, timeout=10)
