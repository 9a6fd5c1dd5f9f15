#!/usr/bin/env python3
"""JSON Web Tokens for the integration tests: keys, key sets (JWKS files) and
tokens, both genuine and forged, so that tests can check what the agent's
RequestAuthentication accepts and what it refuses.

Only `cryptography` is needed. As a library:

    key = rsa_key()
    write_jwks(path, [(key, "rsa-1")])
    token = mint(key, claims("https://issuer.example", "alice", aud="shop"), alg="RS256", kid="rsa-1")
    tamper(token)                          # one bit of the signature flipped
    forge_none(claims(...))                # alg "none", empty signature
    forge_hs256(claims(...), rsa_modulus(key), kid="rsa-1")
                                           # HMAC keyed with the public key: the
                                           # algorithm-confusion attack

Genuine algorithms: RS256, RS384, RS512 (RSA key), ES256 (P-256), ES384 (P-384),
EdDSA (Ed25519).
"""
import base64
import hashlib
import hmac
import json
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# ---------------------------------------------------------------- encoding


def b64url(data):
    """Unpadded base64url, as JWS writes every segment."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value):
    return json.dumps(value, separators=(",", ":")).encode()


def _uint(number, length=None):
    length = length or max(1, (number.bit_length() + 7) // 8)
    return number.to_bytes(length, "big")


# ---------------------------------------------------------------- keys


def rsa_key(bits=2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve="P-256"):
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
    return ec.generate_private_key(curves[curve])


def ed25519_key():
    return ed25519.Ed25519PrivateKey.generate()


def rsa_modulus(key):
    """The public modulus as big-endian bytes: what an attacker who only has the
    JWKS would use as the HMAC secret."""
    return _uint(key.public_key().public_numbers().n)


def public_jwk(key, kid=None, alg=None, use="sig"):
    """The public half of `key` as a JWK (a dict)."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": b64url(_uint(numbers.n)), "e": b64url(_uint(numbers.e))}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        name, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}[key.curve.name]
        jwk = {"kty": "EC", "crv": name, "x": b64url(_uint(numbers.x, size)), "y": b64url(_uint(numbers.y, size))}
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    else:
        raise TypeError(f"unsupported key type {type(key).__name__}")
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    if use is not None:
        jwk["use"] = use
    return jwk


def jwks(entries):
    """A JWKS text from (key, kid) pairs, private keys or ready JWK dicts."""
    keys = []
    for entry in entries:
        if isinstance(entry, dict):
            keys.append(entry)
        elif isinstance(entry, tuple):
            keys.append(public_jwk(*entry))
        else:
            keys.append(public_jwk(entry))
    return json.dumps({"keys": keys}, indent=2)


def write_jwks(path, entries):
    """Writes a JWKS file (see `jwks`) and returns its path."""
    with open(path, "w") as handle:
        handle.write(jwks(entries))
    return path


# ---------------------------------------------------------------- tokens


def claims(iss, sub=None, aud=None, lifetime=3600, now=None, **extra):
    """A claims set valid from a minute before `now` for `lifetime` seconds."""
    now = int(time.time() if now is None else now)
    result = {"iss": iss, "iat": now, "nbf": now - 60, "exp": now + lifetime}
    if sub is not None:
        result["sub"] = sub
    if aud is not None:
        result["aud"] = aud
    result.update(extra)
    return result


_DIGESTS = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def sign(key, alg, signing_input):
    """The JWS signature of `signing_input` (bytes) with `alg`."""
    if alg in ("RS256", "RS384", "RS512"):
        return key.sign(signing_input, padding.PKCS1v15(), _DIGESTS[alg[2:]]())
    if alg in ("ES256", "ES384"):
        size = {"ES256": 32, "ES384": 48}[alg]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_DIGESTS[alg[2:]]())))
        return _uint(r, size) + _uint(s, size)
    if alg == "EdDSA":
        return key.sign(signing_input)
    raise ValueError(f"unsupported alg {alg}")


def compact(header, payload, signature):
    """Joins a header (dict), a payload (dict, or bytes taken as they are) and a
    signature (bytes) into the compact serialization."""
    body = payload if isinstance(payload, bytes) else _json(payload)
    return f"{b64url(_json(header))}.{b64url(body)}.{b64url(signature)}"


def mint(key, payload, alg="RS256", kid=None, typ="JWT", header=None):
    """A genuine token. `header` adds or overrides header members (a value of
    None removes the member)."""
    fields = {"alg": alg}
    if typ is not None:
        fields["typ"] = typ
    if kid is not None:
        fields["kid"] = kid
    for name, value in (header or {}).items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    body = payload if isinstance(payload, bytes) else _json(payload)
    signing_input = f"{b64url(_json(fields))}.{b64url(body)}".encode()
    return f"{signing_input.decode()}.{b64url(sign(key, alg, signing_input))}"


# ---------------------------------------------------------------- forgeries


def forge_none(payload, header=None):
    """`alg: none` with an empty signature."""
    fields = {"alg": "none", "typ": "JWT"}
    fields.update(header or {})
    body = payload if isinstance(payload, bytes) else _json(payload)
    return f"{b64url(_json(fields))}.{b64url(body)}."


def forge_hs256(payload, secret, kid=None):
    """HS256 keyed with `secret` (bytes), e.g. `rsa_modulus(key)`."""
    fields = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        fields["kid"] = kid
    body = payload if isinstance(payload, bytes) else _json(payload)
    signing_input = f"{b64url(_json(fields))}.{b64url(body)}".encode()
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(mac)}"


def tamper(token, bit=0):
    """The token with one bit of its signature flipped (bit 0: the lowest bit of
    the first byte); still well-formed, no longer genuine."""
    head, body, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[bit // 8] ^= 1 << (bit % 8)
    return f"{head}.{body}.{b64url(bytes(raw))}"


def replace_claims(token, payload):
    """The token's header and signature around another payload (a forgery the
    signature no longer covers)."""
    head, _, signature = token.split(".")
    body = payload if isinstance(payload, bytes) else _json(payload)
    return f"{head}.{b64url(body)}.{signature}"
