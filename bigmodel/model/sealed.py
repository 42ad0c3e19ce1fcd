"""Checkpoint files at rest: sealed with AES-GCM when a key is given, checked by SHA-256 always.

A sealed file is `MAGIC`, a 4-byte header length, a JSON header (format version, the file's
name, its plaintext SHA-256 and size, the chunk size, the key derivation and a key check),
then chunks of `nonce (12 bytes) + ciphertext + tag (16 bytes)`, each under a fresh random
nonce. Every chunk's associated data is the header followed by the chunk's index and whether it
is the last, so a renamed, reordered, truncated or extended file fails to open, as does any
altered byte. Plaintext never touches the disk: files are sealed in memory and opened into memory.

The key comes from an environment variable: the base64 of 32 raw bytes, or else a passphrase
stretched by Scrypt with a random salt stored in each header. The key check (an HMAC of a
constant under the key) tells a wrong key from a damaged file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bigmodel.errors import BigModelError

MAGIC = b"BIGMODEL-SEALED\n"
VERSION = 1
CHUNK = 4 << 20  # plaintext bytes per AES-GCM message
NONCE, TAG = 12, 16
SCRYPT = (2**15, 8, 1)  # Scrypt's n, r, p: ~32 MiB and ~0.1 s per derivation


def _aesgcm():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise BigModelError("sealed checkpoints need the cryptography package: pip install cryptography") from None
    return AESGCM


@dataclass(frozen=True)
class Key:
    """The secret an environment variable holds: 32 raw bytes, or a passphrase for Scrypt."""

    secret: bytes
    passphrase: bool
    source: str  # the variable's name, for messages

    @classmethod
    def from_env(cls, var: str) -> Key:
        value = os.environ.get(var, "")
        if not value:
            raise BigModelError(f"--encrypt-key-env {var}: that environment variable is empty or unset")
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return cls(raw, passphrase=False, source=var)
        return cls(value.encode(), passphrase=True, source=var)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a handful of keys live as long as the process)
    def derive(self, salt: bytes, cost: tuple[int, int, int] = SCRYPT) -> bytes:
        """The AES-256 key for a file with this salt and Scrypt cost (the raw key itself when there is no
        passphrase)."""
        if not self.passphrase:
            return self.secret
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        n, r, p = cost
        return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(self.secret)


def key_check(key: bytes) -> str:
    return hmac.new(key, b"bigmodel key check", hashlib.sha256).hexdigest()[:16]


def is_sealed(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _associated(header: bytes, index: int, last: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def seal(data: bytes | bytearray, name: str, key: Key, sha256: str) -> bytearray:
    """`data` (whose SHA-256 is `sha256`) as a sealed file called `name`."""
    salt = os.urandom(16) if key.passphrase else b""
    aes_key = key.derive(salt)
    fields = {"version": VERSION, "name": name, "sha256": sha256, "size": len(data), "chunk": CHUNK,
              "kdf": "scrypt" if key.passphrase else "raw", "salt": salt.hex(), "scrypt": SCRYPT,
              "key_check": key_check(aes_key)}
    header = json.dumps(fields, sort_keys=True).encode()
    n_chunks = max(1, -(-len(data) // CHUNK))
    offset = len(MAGIC) + 4 + len(header)
    sealed = bytearray(offset + n_chunks * (NONCE + TAG) + len(data))
    sealed[:offset] = MAGIC + len(header).to_bytes(4, "big") + header
    aes, plain, out = _aesgcm()(aes_key), memoryview(data), memoryview(sealed)
    for i in range(n_chunks):
        body = plain[i * CHUNK:(i + 1) * CHUNK]
        nonce = os.urandom(NONCE)
        out[offset:offset + NONCE] = nonce
        aes.encrypt_into(nonce, body, _associated(header, i, i == n_chunks - 1),
                         out[offset + NONCE:offset + NONCE + len(body) + TAG])
        offset += NONCE + len(body) + TAG
    return sealed


def header_of(path: Path, sealed: bytes | memoryview) -> tuple[dict, int]:
    """The parsed header of a sealed file and where its chunks begin."""
    size = int.from_bytes(sealed[len(MAGIC):len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(sealed[start:start + size]))
    except ValueError:
        raise BigModelError(f"{path}: damaged header of a sealed file") from None
    if header.get("version") != VERSION:
        raise BigModelError(f"{path}: sealed with format version {header.get('version')}; this bigmodel reads "
                            f"{VERSION}")
    return header, start + size


@dataclass
class Plaintext:
    """A decrypted file, in memory only: `data` to read and, on Linux, `path`, an anonymous in-memory file
    (memfd: never on disk) for libraries that open files by name, as safetensors memory-maps its input."""

    data: mmap.mmap | bytearray
    header: dict
    fd: int | None = None

    @property
    def path(self) -> str | None:
        return None if self.fd is None else f"/proc/self/fd/{self.fd}"

    def __enter__(self) -> Plaintext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the anonymous file (the memory goes with the last reference to `data`)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _memory(size: int) -> tuple[mmap.mmap | bytearray, int | None]:
    """Writable memory for `size` bytes: an anonymous memory file where the OS has them, else a bytearray."""
    if size and hasattr(os, "memfd_create"):
        fd = os.memfd_create("bigmodel-unsealed", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size), fd
    return bytearray(size), None


def unseal(path: Path, key: Key | None) -> Plaintext:
    """The plaintext of the sealed file at `path`, decrypted into memory, with the file's header."""
    if key is None:
        raise BigModelError(f"{path}: sealed (AES-GCM); pass --encrypt-key-env VAR naming the variable with its key")
    with path.open("rb") as fh:
        view = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
    header, offset = header_of(path, view)
    raw_header = bytes(view[len(MAGIC) + 4:offset])
    if header["name"] != path.name:
        raise BigModelError(f"{path}: sealed as {header['name']!r}, not {path.name!r}; files were swapped or renamed")
    aes_key = key.derive(bytes.fromhex(header["salt"]), tuple(header["scrypt"]))
    if not hmac.compare_digest(key_check(aes_key), header["key_check"]):
        raise BigModelError(f"{path}: wrong key in {key.source} (the file was sealed with another)")
    size, chunk = int(header["size"]), int(header["chunk"])
    n_chunks = max(1, -(-size // chunk))
    if len(view) != offset + n_chunks * (NONCE + TAG) + size:
        raise BigModelError(f"{path}: {len(view):,} bytes where the header implies "
                            f"{offset + n_chunks * (NONCE + TAG) + size:,}: truncated or extended")
    data, fd = _memory(size)
    out, aes = memoryview(data), _aesgcm()(aes_key)
    from cryptography.exceptions import InvalidTag

    def open_chunk(i: int) -> bool:
        start = offset + i * (NONCE + TAG + chunk)
        length = min(chunk, size - i * chunk)
        try:
            aes.decrypt_into(bytes(view[start:start + NONCE]), view[start + NONCE:start + NONCE + length + TAG],
                             _associated(raw_header, i, i == n_chunks - 1), out[i * chunk:i * chunk + length])
        except InvalidTag:
            return False
        return True

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # OpenSSL releases the GIL
        opened = list(pool.map(open_chunk, range(n_chunks)))
    if not all(opened):
        if fd is not None:
            os.close(fd)
        raise BigModelError(f"{path}: altered (chunk {opened.index(False)} fails its AES-GCM tag); refusing to "
                            "load it")
    return Plaintext(data, header, fd)


def digest(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    sha256, block = hashlib.sha256(), bytearray(8 << 20)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(block):
            sha256.update(memoryview(block)[:n])
    return sha256.hexdigest()
