"""Endpoint secrets are encrypted at rest, with the configured key or one kept in the data
directory (SPEC §5: a leaked database alone does not reveal them)."""

from __future__ import annotations

import base64
import multiprocessing
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.delivery.secret_box import KEY_FILE_NAME, SecretBox, SecretKeyMismatch, generate_key
from shared.delivery.signing import new_endpoint_secret

SECRET = "whsec_vT6YhicApx5ycSNjqEr/qHauitbTdcq9g0f8EMjhnaY="


def test_a_secret_comes_back_as_it_went_in(tmp_path: Path) -> None:
    box = SecretBox.from_setting(generate_key(), tmp_path)
    secret = new_endpoint_secret()

    assert box.decrypt(box.encrypt(secret)) == secret
    assert box.decrypt(box.encrypt("é ✓")) == "é ✓"


def test_the_stored_form_reveals_neither_the_secret_nor_its_base64(tmp_path: Path) -> None:
    box = SecretBox.from_setting(generate_key(), tmp_path)

    token = box.encrypt(SECRET)

    encoded = SECRET.encode()
    for revealing in (
        SECRET,
        SECRET.removeprefix("whsec_"),
        base64.b64encode(encoded).decode().rstrip("="),
        base64.urlsafe_b64encode(encoded).decode().rstrip("="),
    ):
        assert revealing not in token
    assert box.encrypt(SECRET) != token  # a fresh IV each time: equal secrets do not show


def test_another_key_cannot_decrypt_and_says_the_keys_differ(tmp_path: Path) -> None:
    token = SecretBox.from_setting(generate_key(), tmp_path).encrypt(SECRET)

    with pytest.raises(SecretKeyMismatch, match="REMINDERS_SECRET_KEY — the key differs"):
        SecretBox.from_setting(generate_key(), tmp_path).decrypt(token)


def test_an_altered_token_is_refused(tmp_path: Path) -> None:
    box = SecretBox.from_setting(generate_key(), tmp_path)
    token = box.encrypt(SECRET)
    altered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]

    with pytest.raises(SecretKeyMismatch):
        box.decrypt(altered)


def test_a_rotated_key_decrypts_old_secrets_and_encrypts_with_the_new_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    before = SecretBox.from_setting(old, tmp_path).encrypt(SECRET)

    rotated = SecretBox.from_setting(f"{new}, {old}", tmp_path)

    assert rotated.decrypt(before) == SECRET
    after = rotated.encrypt(SECRET)
    assert SecretBox.from_setting(new, tmp_path).decrypt(after) == SECRET
    with pytest.raises(SecretKeyMismatch):  # the old key alone is not enough any more
        SecretBox.from_setting(old, tmp_path).decrypt(after)


def test_a_configured_key_leaves_the_data_directory_alone(tmp_path: Path) -> None:
    SecretBox.from_setting(generate_key(), tmp_path / "data").encrypt(SECRET)

    assert not (tmp_path / "data").exists()


def test_without_a_configured_key_one_is_kept_private_in_the_data_directory(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    token = SecretBox.from_setting("", data_dir).encrypt(SECRET)

    key_file = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox.from_setting("", data_dir).decrypt(token) == SECRET  # the same key
    assert SecretBox.from_setting(key_file.read_text().strip(), tmp_path).decrypt(token) == SECRET
    assert sorted(path.name for path in data_dir.iterdir()) == [KEY_FILE_NAME]


def test_a_secret_from_the_key_file_does_not_open_with_another_key(tmp_path: Path) -> None:
    token = SecretBox.from_setting("", tmp_path).encrypt(SECRET)

    with pytest.raises(SecretKeyMismatch, match=KEY_FILE_NAME):
        SecretBox.from_setting("", tmp_path / "elsewhere").decrypt(token)


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("not a key\n")

    with pytest.raises(ValueError, match=f"{KEY_FILE_NAME} does not hold a Fernet key"):
        SecretBox.from_setting("", tmp_path)


def test_threads_creating_the_key_file_at_once_share_one_key(tmp_path: Path) -> None:
    count = 16
    start = threading.Barrier(count)

    def encrypt_with_a_new_box(_: int) -> str:
        start.wait()
        return SecretBox.from_setting("", tmp_path).encrypt(SECRET)

    with ThreadPoolExecutor(count) as pool:
        tokens = list(pool.map(encrypt_with_a_new_box, range(count)))

    assert_one_key(tmp_path, tokens)


def encrypt_in_a_process(data_dir: str, start: Any, tokens: Any) -> None:
    start.wait()
    tokens.put(SecretBox.from_setting("", Path(data_dir)).encrypt(SECRET))


def test_processes_creating_the_key_file_at_once_share_one_key(tmp_path: Path) -> None:
    count = 8
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(count), context.Queue()
    processes = [
        context.Process(target=encrypt_in_a_process, args=(str(tmp_path), start, results))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    tokens = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0

    assert_one_key(tmp_path, tokens)


def assert_one_key(data_dir: Path, tokens: list[str]) -> None:
    """Every token opens with the one key in the file, and no draft was left behind."""
    assert sorted(path.name for path in data_dir.iterdir()) == [KEY_FILE_NAME]
    box = SecretBox.from_setting((data_dir / KEY_FILE_NAME).read_text().strip(), data_dir)
    assert [box.decrypt(token) for token in tokens] == [SECRET] * len(tokens)
