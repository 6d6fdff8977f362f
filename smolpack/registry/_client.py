"""Create stage, registry: one HTTP client per registry, speaking the OCI distribution API.

Implements formats/registry.md, "Transport" and "Authentication". Stdlib only
(urllib): HTTPS_PROXY / HTTP_PROXY / NO_PROXY come from urllib's ProxyHandler
(CONNECT tunnels for HTTPS); TLS trusts the system store plus SSL_CERT_FILE.
Loopback registries and those in SMOLPACK_INSECURE_REGISTRIES are tried over
HTTPS first and fall back to plain HTTP only when the server does not speak TLS
(docker's rule); a certificate that fails verification is an error, never a
reason to fall back.

Auth follows the registry's `WWW-Authenticate` challenge: `Basic` sends the
config.json credentials; `Bearer` fetches a token for the request's scope from
the realm (anonymously when there are no credentials: Docker Hub's flow) and
caches it per scope.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import IO, Any

from smolpack.errors import ImageError, RegistryNotFound, RegistryUnauthorized, RegistryUnreachable
from smolpack.registry import _auth, _credentials
from smolpack.registry._reference import plain_http_allowed

TIMEOUT_S = 60.0  # per socket operation; a stalled registry ends with "unreachable"
JSON_MAX_BYTES = 4 << 20  # manifests and configs are KiBs
USER_AGENT = "smolpack"
# What a broken connection raises below urllib: refused, reset, timeout, TLS, a garbled reply.
NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


@dataclass(frozen=True, slots=True)
class Body:
    """A request body that can be sent again after an auth retry."""

    path: Path | None = None
    data: bytes = b""
    # called with the bytes sent so far as a file body is read (upload progress)
    on_read: Callable[[int], None] | None = None

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)

    def open(self) -> _FileBody | bytes:
        if self.path is None:
            return self.data
        return _FileBody(self.path.open("rb"), self.on_read)


class _FileBody:
    """A file http.client reads in blocks (never whole into memory), reporting progress."""

    def __init__(self, f: IO[bytes], on_read: Callable[[int], None] | None) -> None:
        self._f = f
        self._done = 0
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._done += len(data)
        if self._on_read is not None:
            self._on_read(self._done)
        return data

    def close(self) -> None:
        self._f.close()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The system trust store, plus SSL_CERT_FILE when set (added, not instead).

    Built once per process: loading a CA bundle costs ~0.1 s (more on a busy machine).
    OpenSSL's default paths read SSL_CERT_FILE *instead of* the system bundle, so when it
    is set the system bundle is loaded as well.
    """
    ctx = ssl.create_default_context()  # default paths: SSL_CERT_FILE or the system bundle
    extra = os.environ.get("SSL_CERT_FILE")
    system = ssl.get_default_verify_paths().openssl_cafile
    if extra and system and os.path.isfile(system) and system != extra:
        try:
            ctx.load_verify_locations(cafile=system)
        except (ssl.SSLError, OSError) as err:
            raise RegistryUnreachable(f"cannot load CA certificates {system}: {err}") from None
    return ctx


class _NoRedirectAuth(urllib.request.HTTPRedirectHandler):
    """Follow blob redirects (to object storage) without our Authorization header.

    urllib already drops headers added with `add_unredirected_header`; this only
    turns 307/308 for GET/HEAD into the same method, which the stdlib refuses.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if req.get_method() not in ("GET", "HEAD"):
            return None
        return urllib.request.Request(
            newurl,
            headers={k: v for k, v in req.header_items() if k.lower() != "authorization"},
            method=req.get_method(),
        )


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host: {reason.strerror}"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {reason.verify_message}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _is_not_tls(err: BaseException) -> bool:
    """The server answered a TLS hello with plain HTTP (or hung up on it)."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return False
    if isinstance(reason, ssl.SSLError):
        return True
    return isinstance(reason, ConnectionResetError)


class RegistryClient:
    """Requests to one registry; `offline=True` refuses every request."""

    def __init__(self, registry: str, endpoint: str, *, offline: bool = False) -> None:
        self.registry = registry  # as written in references; the key for credentials
        self.endpoint = endpoint  # host[:port] the API answers at
        self.offline = offline
        self._scheme: str | None = None
        self._tokens: dict[str, str] = {}
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._creds_loaded = False
        self._creds: _credentials.Credentials | None = None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(),
            urllib.request.HTTPSHandler(context=ssl_context()),
            _NoRedirectAuth(),
        )

    # -- public --------------------------------------------------------------------

    def get_json(
        self, path: str, *, scope: str, accept: tuple[str, ...], what: str
    ) -> tuple[bytes, str | None]:
        """GET a small document; (bytes, Content-Type)."""
        headers = {"Accept": ", ".join(accept)}
        with self.request("GET", path, scope=scope, headers=headers, what=what) as resp:
            data = resp.read(JSON_MAX_BYTES + 1)
            ctype = resp.headers.get("Content-Type")
        if len(data) > JSON_MAX_BYTES:
            raise ImageError(f"{what} is larger than {JSON_MAX_BYTES >> 20} MiB")
        return data, ctype.split(";")[0].strip() if ctype else None

    def stream(self, path: str, *, scope: str, what: str) -> Iterator[bytes]:
        """GET a blob in 1 MiB chunks."""
        with self.request("GET", path, scope=scope, what=what) as resp:
            while chunk := resp.read(1 << 20):
                yield chunk

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> HTTPResponse:
        """One API call with auth retries; HTTP failures become our one-line errors.

        `path` starts with `/v2/` or is an absolute URL (an upload Location).
        """
        if self.offline:
            raise RegistryUnreachable(
                f"{what}: not in the cache, and --offline forbids the network"
            )
        self._ensure_scheme()
        for attempt in range(2):
            resp = self._send(method, path, scope, headers or {}, body)
            if resp.status in ok:
                return resp
            status = resp.status
            challenge = resp.headers.get("WWW-Authenticate", "")
            detail = _error_detail(resp)
            resp.close()
            if status == 401 and attempt == 0 and challenge:
                self._challenge = _auth.parse_challenge(challenge)
                self._authenticate(scope)
                continue
            raise self._http_error(status, what, detail)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- transport -----------------------------------------------------------------

    def base_url(self) -> str:
        """scheme://host[:port] of the API (after the first request chose the scheme)."""
        self._ensure_scheme()
        return f"{self._scheme}://{self.endpoint}"

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self._scheme}://{self.endpoint}{path}"

    def _ensure_scheme(self) -> None:
        """Pick https, or http where allowed and the server does not speak TLS (one ping)."""
        if self._scheme is not None:
            return
        self._scheme = "https"
        try:
            self._open(urllib.request.Request(self._url("/v2/"), method="GET")).close()
        except _HttpStatus as status:
            self._note_ping(status.response)
        except NET_ERRORS as err:
            if plain_http_allowed(self.endpoint) and _is_not_tls(err):
                self._scheme = "http"
                try:
                    self._open(urllib.request.Request(self._url("/v2/"), method="GET")).close()
                except _HttpStatus as status:
                    self._note_ping(status.response)
                except NET_ERRORS as err2:
                    raise self._unreachable(err2) from None
            else:
                raise self._unreachable(err) from None

    def _note_ping(self, resp: HTTPResponse) -> None:
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status == 401 and challenge:
            self._challenge = _auth.parse_challenge(challenge)
        resp.close()

    def _unreachable(self, err: BaseException) -> RegistryUnreachable:
        return RegistryUnreachable(f"registry {self.endpoint} is unreachable ({_reason(err)})")

    def _open(self, req: urllib.request.Request) -> HTTPResponse:
        req.add_header("User-Agent", USER_AGENT)
        try:
            resp = self._opener.open(req, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as err:
            raise _HttpStatus(err) from None
        assert isinstance(resp, HTTPResponse)
        return resp

    def _send(
        self, method: str, path: str, scope: str, headers: dict[str, str], body: Body | None
    ) -> HTTPResponse:
        data = body.open() if body is not None else None
        try:
            req = urllib.request.Request(self._url(path), data=data, method=method)
            for key, value in headers.items():
                req.add_header(key, value)
            if body is not None:
                req.add_header("Content-Length", str(body.size()))
            auth = self._auth_header(scope)
            # An upload Location may point at another host (object storage): no token there.
            if auth and urllib.parse.urlsplit(req.full_url).netloc == self.endpoint:
                req.add_unredirected_header("Authorization", auth)
            try:
                return self._open(req)
            except _HttpStatus as status:
                return status.response
            except NET_ERRORS as err:
                raise self._unreachable(err) from None
        finally:
            if data is not None and not isinstance(data, bytes):
                data.close()

    # -- auth ----------------------------------------------------------------------

    def _stored_creds(self) -> _credentials.Credentials | None:
        if not self._creds_loaded:
            self._creds = _credentials.lookup(self.registry)
            self._creds_loaded = True
        return self._creds

    def _auth_header(self, scope: str) -> str | None:
        if self._challenge is None:
            return None
        kind, _params = self._challenge
        if kind == "bearer":
            token = self._tokens.get(scope)
            return f"Bearer {token}" if token else None
        creds = self._stored_creds()
        if kind == "basic" and creds is not None and _auth.has_password(creds):
            return _auth.basic_value(creds)
        return None

    def _authenticate(self, scope: str) -> None:
        assert self._challenge is not None
        kind, params = self._challenge
        creds = self._stored_creds()
        if kind == "basic":
            if not _auth.has_password(creds):
                raise _auth.missing_credentials(self.registry)
            return
        if kind != "bearer":
            raise RegistryUnauthorized(
                f"registry {self.registry} asks for unsupported auth {kind!r}"
            )
        if creds is not None and creds.bearer:
            self._tokens[scope] = creds.bearer
            return
        req = _auth.token_request(params, scope, creds, self.registry)
        realm = params["realm"]
        try:
            with self._open(req) as resp:
                data = resp.read(JSON_MAX_BYTES)
        except _HttpStatus as status:
            code = status.response.status
            status.response.close()
            if code in (401, 403):
                raise _auth.refused(self.registry, creds) from None
            raise ImageError(f"token service {realm} answered HTTP {code}") from None
        except NET_ERRORS as err:
            raise RegistryUnreachable(
                f"token service {realm} is unreachable ({_reason(err)})"
            ) from None
        self._tokens[scope] = _auth.parse_token(data, realm)

    def _http_error(self, status: int, what: str, detail: str) -> ImageError:
        if status in (401, 403):
            return _auth.refused(self.registry, self._stored_creds())
        if status == 404:
            return RegistryNotFound(f"{what}: not found{detail}")
        return ImageError(f"{what}: registry {self.endpoint} answered HTTP {status}{detail}")


class _HttpStatus(Exception):
    """A non-2xx answer, carried as the response it is."""

    def __init__(self, err: urllib.error.HTTPError) -> None:
        super().__init__(err.code)
        self.response: HTTPResponse = err  # type: ignore[assignment]


def _error_detail(resp: HTTPResponse) -> str:
    """` (CODE: message)` from the distribution API's error body, when it has one."""
    try:
        doc = json.loads(resp.read(65536) or b"{}")
        first = doc["errors"][0]
        return f" ({first['code']}: {first.get('message', '')})".replace(": )", ")")
    except Exception:  # noqa: BLE001 - the body is optional decoration
        return ""
