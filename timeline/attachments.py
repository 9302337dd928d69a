"""Attachment bytes on disk, outside the database rows, named by their SHA-256.

Content addressing makes storing idempotent: a message fetched again, or the same logo in a
hundred signatures, is one file. A file is written under a temporary name and renamed into
place, so a crash never leaves a half-written attachment under its real name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def put(self, data: bytes) -> str | None:
        """Store `data`; its digest, or None when it is larger than the limit (not stored)."""
        if len(data) > self.max_bytes:
            return None
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest

    def path(self, digest: str) -> Path | None:
        """Where a stored attachment is; None for anything that is not a stored digest."""
        if not _DIGEST.fullmatch(digest):
            return None
        path = self._path(digest)
        return path if path.is_file() else None

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / digest
