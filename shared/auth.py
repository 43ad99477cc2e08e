"""Who may use what: the operators' endpoints and the gateway's clients.

Operators: a request that changes something (restart, drain, scale, end a session) or
reads sessions or the audit log must carry the admin token as `Authorization: Bearer
<token>`. `hark up` always has one: HARK_ADMIN_TOKEN, or one it makes up and leaves in
a file of the user's (`admin_token_path`) for the `hark` commands. An app built without
a token (tests, embedding) lets only loopback clients in.

Clients: with API keys set (HARK_API_KEYS, HARK_API_KEYS_FILE), a WebSocket handshake
must carry a key (`Authorization: Bearer <key>`, native clients) or a short-lived
token from POST /token (`?token=` or `Sec-WebSocket-Protocol: hark-token.<token>`,
browsers, which cannot set headers on a WebSocket).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from shared.config import Settings, SettingsError
from shared.http_errors import json_error


def bearer(request: web.Request, schemes: tuple[str, ...] = ("bearer",)) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header (or of another of
    `schemes`, lower case), if there is one."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given or None if scheme.lower() in schemes else None


def require_admin(request: web.Request, token: str | None) -> None:
    """Return if the request may change things; raise 401 or 403 (JSON) if not."""
    if token is None:
        if not _loopback(request.remote):
            raise json_error(web.HTTPForbidden, "forbidden",
                             "set HARK_ADMIN_TOKEN to allow this from other hosts")  # fmt: skip
        return
    given = bearer(request)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise json_error(web.HTTPUnauthorized, "unauthorized",
                         "this endpoint needs Authorization: Bearer <HARK_ADMIN_TOKEN>",
                         headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def admin_token_dir() -> Path:
    """This user's folder of the admin tokens `hark up` made up."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "hark"


def admin_token_path(status_port: int) -> Path:
    """Where `hark up` keeps the admin token it made up (no HARK_ADMIN_TOKEN given) for
    the `hark` commands of the same user to find: one file per status port, mode 0600."""
    return admin_token_dir() / f"admin-token-{status_port}"


def read_admin_token(status_url: str) -> str | None:
    """The token `hark up` made up for the supervisor at `status_url`, if it is here."""
    port = urlsplit(status_url).port
    if port is None:
        return None
    try:
        return admin_token_path(port).read_text().strip() or None
    except OSError:
        return None


def _loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False  # a unix socket peer has no address; a token is needed there


# -- the gateway's clients -----------------------------------------------------------

TOKEN_PROTOCOL = "hark-token."  # Sec-WebSocket-Protocol: hark-token.<token>
MIN_KEY_CHARS = 16
_TOKEN_CONTEXT = b"hark-token-v1."


@dataclass(frozen=True)
class Principal:
    """Who a connection speaks for: the name of the key, and the token's subject if any."""

    key: str
    subject: str | None = None


class ApiKeys:
    """The keys of HARK_API_KEYS / HARK_API_KEYS_FILE, and the tokens signed with them.

    A token is `<payload>.<mac>`, both base64url: the payload names the key, a subject
    (the client it was issued for) and an expiry; the MAC is HMAC-SHA256 under that key.
    Removing a key revokes its tokens. Every comparison is constant-time.
    """

    def __init__(self, keys: dict[str, str], token_ttl: float) -> None:
        if not keys:
            raise SettingsError("no API keys given")
        self._keys = {name: key.encode() for name, key in keys.items()}
        self.token_ttl = token_ttl

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys | None:
        """The keys configured, or None: the gateway is open."""
        lines: list[str] = []
        if settings.api_keys:
            lines += settings.api_keys.split(",")
        if settings.api_keys_file:
            try:
                text = Path(settings.api_keys_file).read_text()
            except OSError as exc:
                raise SettingsError(f"HARK_API_KEYS_FILE: {exc.strerror}") from None
            lines += [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        keys: dict[str, str] = {}
        for line in (ln.strip() for ln in lines):
            if not line:
                continue
            name, _, key = line.rpartition(":")
            if len(key) < MIN_KEY_CHARS:
                raise SettingsError(f"an API key has fewer than {MIN_KEY_CHARS} characters")
            name = name or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
            if name in keys:
                raise SettingsError(f"API key name {name!r} given twice")
            keys[name] = key
        return cls(keys, settings.token_ttl) if keys else None

    def check_key(self, given: str) -> Principal | None:
        """The key's principal, or None. Compares with every key, so the time taken
        does not tell which one came closest."""
        found = None
        for name, key in self._keys.items():
            if hmac.compare_digest(given.encode(), key):
                found = name
        return None if found is None else Principal(found)

    def issue(self, principal: Principal, subject: str, now: float | None = None) -> str:
        """A token for `subject`, signed with the key `principal` authenticated with."""
        expires = int((time.time() if now is None else now) + self.token_ttl)
        payload = _b64(json.dumps({"k": principal.key, "s": subject, "e": expires},
                                  separators=(",", ":")).encode())  # fmt: skip
        return f"{payload}.{self._mac(principal.key, payload)}"

    def check_token(self, token: str, now: float | None = None) -> Principal | None:
        """The token's principal, or None (malformed, unknown key, forged or expired)."""
        payload, _, mac = token.partition(".")
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key, subject, expires = claims["k"], claims["s"], claims["e"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(key, str) or key not in self._keys or not isinstance(expires, int):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(key, payload).encode()):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return Principal(key, str(subject))

    def _mac(self, key: str, payload: str) -> str:
        return _b64(hmac.digest(self._keys[key], _TOKEN_CONTEXT + payload.encode(), "sha256"))

    def authenticate(
        self, request: web.Request, schemes: tuple[str, ...] = ("bearer",)
    ) -> tuple[Principal, str | None]:
        """The principal of a WebSocket handshake, and the subprotocol to answer with
        (the token's, when it came that way). Raises 401, saying nothing more.

        A key comes as `Authorization: <scheme> KEY`, one of `schemes`; where those
        include "token" (Deepgram's `Authorization: Token KEY`), also as Deepgram's
        browsers send it: the subprotocols `token, KEY`."""
        given = bearer(request, schemes)
        found: Principal | None = None
        protocol = None
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                   .split(",")]  # fmt: skip
        if given is not None:
            found = self.check_key(given.strip())
        elif "token" in request.query:
            found = self.check_token(request.query["token"])
        elif "token" in schemes and len(offered) == 2 and offered[0] == "token":
            protocol = "token"
            found = self.check_key(offered[1])
        else:
            tokens = [p for p in offered if p.startswith(TOKEN_PROTOCOL)]
            if tokens:
                protocol = tokens[0]
                found = self.check_token(protocol[len(TOKEN_PROTOCOL) :])
        if found is None:
            raise unauthorized()
        return found, protocol


def unauthorized() -> web.HTTPError:
    return json_error(web.HTTPUnauthorized, "unauthorized", "missing or invalid credentials",
                      headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def origin_allowed(request: web.Request, allowed: str | None) -> bool:
    """Whether a browser may connect from the request's Origin (no Origin: not a browser)."""
    origin = request.headers.get("Origin")
    if allowed is None or origin is None:
        return True
    return origin in {o.strip() for o in allowed.split(",")}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
