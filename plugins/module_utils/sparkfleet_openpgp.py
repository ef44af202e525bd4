"""OpenPGP key fingerprints in pure Python (no gpg needed on the host).

Reads ASCII-armored or binary public keys and keyrings (what apt accepts as a keyring: ``.asc``,
``.gpg``, and armored blocks inlined in a deb822 ``Signed-By`` field) and returns the fingerprints
of every primary key and subkey, as apt and gpg print them: upper-case hex, 40 digits for v4
keys, 64 for v5/v6 keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
END = "-----END PGP PUBLIC KEY BLOCK-----"
PUBLIC_KEY, PUBLIC_SUBKEY = 6, 14


class OpenPGPError(ValueError):
    """The data is not a readable OpenPGP public key or keyring."""


def is_armored(data):
    return BEGIN.encode() in data


def dearmor(data):
    """The binary packets of every armored public key block in ``data`` (bytes)."""
    text = data.decode("ascii", errors="replace")
    out = b""
    blocks = 0
    pos = text.find(BEGIN)
    while pos != -1:
        end = text.find(END, pos)
        if end == -1:
            raise OpenPGPError("armored key block without its END line")
        lines = [line.strip() for line in text[pos + len(BEGIN) : end].splitlines()]
        while lines and not lines[0]:
            lines.pop(0)
        if lines and ":" in lines[0]:  # armor headers (Version:, Comment:) up to a blank line
            while lines and lines[0]:
                lines.pop(0)
        body = "".join(line for line in lines if line and not line.startswith("="))
        try:
            out += base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise OpenPGPError(f"armored key block is not valid base64: {exc}") from exc
        blocks += 1
        pos = text.find(BEGIN, end)
    if not blocks:
        raise OpenPGPError("no armored public key block found")
    return out


def packets(binary):
    """Yield ``(tag, body)`` for each OpenPGP packet in ``binary``."""
    i, n = 0, len(binary)
    while i < n:
        first = binary[i]
        i += 1
        if not first & 0x80:
            raise OpenPGPError(f"byte {i - 1} is not an OpenPGP packet header")
        if first & 0x40:  # new format
            tag = first & 0x3F
            if i >= n:
                raise OpenPGPError("truncated packet header")
            octet = binary[i]
            if octet < 192:
                length, i = octet, i + 1
            elif octet < 224:
                if i + 1 >= n:
                    raise OpenPGPError("truncated packet header")
                length, i = ((octet - 192) << 8) + binary[i + 1] + 192, i + 2
            elif octet == 255:
                length, i = int.from_bytes(binary[i + 1 : i + 5], "big"), i + 5
            else:
                raise OpenPGPError("partial body length in a key packet")
        else:  # old format
            tag, kind = (first >> 2) & 0x0F, first & 0x03
            if kind == 3:
                length = n - i
            else:
                size = (1, 2, 4)[kind]
                length, i = int.from_bytes(binary[i : i + size], "big"), i + size
        if i + length > n:
            raise OpenPGPError(f"truncated packet (tag {tag})")
        yield tag, binary[i : i + length]
        i += length


def key_fingerprint(body):
    """Fingerprint of a public key or subkey packet body; None for v3 keys."""
    version = body[0] if body else 0
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if version in (5, 6):
        prefix = b"\x9a" if version == 5 else b"\x9b"
        return hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    return None


def fingerprints(data):
    """``[{"fingerprint": HEX, "primary": bool}]`` for the keys in ``data`` (armored or binary)."""
    binary = dearmor(data) if is_armored(data) else data
    found = []
    for tag, body in packets(binary):
        if tag in (PUBLIC_KEY, PUBLIC_SUBKEY):
            fpr = key_fingerprint(body)
            if fpr:
                found.append({"fingerprint": fpr, "primary": tag == PUBLIC_KEY})
    if not found:
        raise OpenPGPError("no public key packet found")
    return found
