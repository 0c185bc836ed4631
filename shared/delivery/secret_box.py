"""Endpoint secrets at rest: encrypted with Fernet, so a leaked database alone does not
reveal them (SPEC §5).

The key is ``REMINDERS_SECRET_KEY``: one or more Fernet keys, comma-separated, the first
encrypting and every one decrypting, so a key is rotated by putting the new one first and
dropping the old one once every stored secret has been written again. When it is empty a
key is generated once and kept in ``REMINDERS_DATA_DIR/secret.key``, which suits one host;
the API and the workers must share the key, so separate machines set the variable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE_NAME = "secret.key"
SETTING = "REMINDERS_SECRET_KEY"


class SecretKeyMismatch(Exception):
    """A stored secret cannot be decrypted: the key is not the one that encrypted it."""


def generate_key() -> str:
    """A fresh Fernet key (32 random bytes, URL-safe base64): a ``REMINDERS_SECRET_KEY``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts secrets with the deployment's Fernet keys."""

    def __init__(self, keys: Sequence[str], key_source: str = SETTING) -> None:
        """``keys``: Fernet keys, the first encrypting, every one decrypting; ``key_source``
        names where they came from, for the error a mismatch raises.

        Raises:
            ValueError: no key, or one that is not a Fernet key.
        """
        if not keys:
            raise ValueError("a secret box needs at least one Fernet key")
        fernets = [Fernet(key) for key in keys]
        self._fernet = MultiFernet(fernets)
        self._first = fernets[0]
        self._key_source = key_source

    @classmethod
    def from_setting(cls, secret_key: str, data_dir: Path) -> SecretBox:
        """The box of the setting ``secret_key`` (``REMINDERS_SECRET_KEY``, validated by
        `shared.config`), or when it is empty of the key in ``data_dir/secret.key``, which
        the first caller creates.

        Raises:
            OSError: the key file cannot be created or read.
            ValueError: the key file does not hold a Fernet key.
        """
        if secret_key.strip():
            return cls([key.strip() for key in secret_key.split(",")])
        path = data_dir / KEY_FILE_NAME
        return cls([_key_in_file(path)], key_source=f"{SETTING} (empty, so the key in {path})")

    def encrypt(self, plaintext: str) -> str:
        """``plaintext`` encrypted with the first key: a Fernet token, different every call."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plaintext of a token `encrypt` made with any of the keys.

        Raises:
            SecretKeyMismatch: no key decrypts it (or it is not a token, or was altered).
        """
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch(
                f"the secret cannot be decrypted with {self._key_source} — the key differs "
                "from the one that encrypted it"
            ) from None

    def encrypted_with_first_key(self, token: str) -> bool:
        """Whether ``token`` was made with the first key (the one `encrypt` uses now)."""
        try:
            self._first.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def reencrypt(self, token: str) -> str:
        """``token``'s plaintext encrypted again with the first key.

        Raises:
            SecretKeyMismatch: as `decrypt`.
        """
        return self.encrypt(self.decrypt(token))


def _key_in_file(path: Path) -> str:
    """The key kept in ``path``, written there first if there is none.

    The key is written to a private temporary file and linked to ``path``, which fails if
    ``path`` exists: ``path`` only ever appears whole, and processes racing to create it
    all end up reading the one that won.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(generate_key() + "\n")
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    key = path.read_text().strip()
    try:
        Fernet(key)
    except ValueError:
        raise ValueError(
            f"{path} does not hold a Fernet key; restore it, or set {SETTING} to the key "
            "that encrypted the stored secrets"
        ) from None
    return key
