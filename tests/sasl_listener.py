"""A TLS listener on loopback that speaks just enough Kafka to receive a SASL login.

It stands in for a SASL_SSL broker (MSK's IAM listener) in tests: it answers ApiVersions,
SaslHandshake and SaslAuthenticate (accepting any credentials), records what the client
sent, and drops the connection at the first request after that (Metadata), so a client
never gets further than signing in. Its certificate is self-signed for 127.0.0.1; point
``ssl.ca.location`` (KAFKA_SSL_CA_LOCATION) at :attr:`SaslListener.ca_path`.

Only the request versions it advertises are decoded: ApiVersions 0-3, SaslHandshake 0-1,
SaslAuthenticate 0-1 (none of them flexible except ApiVersions 3, whose response header
is still version 0).
"""

from __future__ import annotations

import datetime
import ipaddress
import socketserver
import ssl
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE, METADATA = 18, 17, 36, 3
#: (api key, min version, max version) this listener claims to support.
ADVERTISED = [(API_VERSIONS, 0, 3), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1), (METADATA, 0, 12)]
UNSUPPORTED_VERSION = 35


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (an IP address SAN) and its key, as PEM files: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "listener-cert.pem", directory / "listener-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Login:
    """What one connection sent while signing in."""

    mechanism: str | None = None
    auth_bytes: bytes | None = None
    requests: list[tuple[int, int]] = field(default_factory=list)  # (api key, version) in order

    @property
    def bearer_token(self) -> str | None:
        """The token of an OAUTHBEARER client-first message (RFC 7628: ``n,,\\x01auth=Bearer T\\x01\\x01``)."""
        if self.auth_bytes is None:
            return None
        for pair in self.auth_bytes.split(b"\x01"):
            if pair.startswith(b"auth=Bearer "):
                return pair.removeprefix(b"auth=Bearer ").decode()
        return None


class SaslListener:
    """``with SaslListener(tmp_path) as listener:`` serves on ``listener.bootstrap`` until the block ends."""

    def __init__(self, directory: Path):
        self.ca_path, key_path = self_signed_certificate(directory)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(self.ca_path, key_path)
        self.logins: list[Login] = []
        self.refused_tls = 0  # TLS handshakes that failed (the client did not trust our certificate)
        self._signed_in = threading.Condition()
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.bootstrap = f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SaslListener:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for_login(self, timeout: float = 15.0) -> Login:
        """The first connection that completed SaslAuthenticate; AssertionError after ``timeout`` s."""
        with self._signed_in:
            done = self._signed_in.wait_for(lambda: any(login.auth_bytes is not None for login in self.logins), timeout)
        if not done:
            seen = [login.requests for login in self.logins]
            raise AssertionError(f"no SASL login within {timeout} s (requests per connection: {seen})")
        return next(login for login in self.logins if login.auth_bytes is not None)

    # ----------------------------------------------------------------- protocol

    def _serve(self, raw: object) -> None:
        try:
            conn = self._tls.wrap_socket(raw, server_side=True)  # type: ignore[arg-type]
        except (ssl.SSLError, OSError):
            self.refused_tls += 1  # the client refused our certificate, or went away
            return
        login = Login()
        with self._signed_in:
            self.logins.append(login)
        try:
            while (frame := _read_frame(conn)) is not None:
                api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
                login.requests.append((api_key, version))
                body = _request_body(frame, api_key, version)
                if api_key == API_VERSIONS:
                    answer = _api_versions(version)
                elif api_key == SASL_HANDSHAKE:
                    login.mechanism = _string(body, 0)[0]
                    answer = struct.pack(">h", 0) + _array([_str(login.mechanism)])
                elif api_key == SASL_AUTHENTICATE:
                    (size,) = struct.unpack_from(">i", body)
                    with self._signed_in:
                        login.auth_bytes = body[4 : 4 + size]
                        self._signed_in.notify_all()
                    answer = struct.pack(">hhi", 0, -1, 0)  # no error, null message, empty server response
                    if version >= 1:
                        answer += struct.pack(">q", 0)  # session lifetime: no re-authentication
                else:
                    return  # signed in: nothing further is served
                conn.sendall(struct.pack(">ii", 4 + len(answer), correlation_id) + answer)
        except (ssl.SSLError, OSError):
            return
        finally:
            conn.close()


def _read_exactly(conn: ssl.SSLSocket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(conn: ssl.SSLSocket) -> bytes | None:
    head = _read_exactly(conn, 4)
    return None if head is None else _read_exactly(conn, struct.unpack(">i", head)[0])


def _request_body(frame: bytes, api_key: int, version: int) -> bytes:
    """The request after its header: api key, version, correlation id, client id, and
    (flexible requests, here only ApiVersions 3+) tagged fields."""
    (client_id_size,) = struct.unpack_from(">h", frame, 8)
    offset = 10 + max(client_id_size, 0)
    if api_key == API_VERSIONS and version >= 3:
        offset += 1  # an empty tagged-field section
    return frame[offset:]


def _string(data: bytes, offset: int) -> tuple[str, int]:
    (size,) = struct.unpack_from(">h", data, offset)
    return data[offset + 2 : offset + 2 + size].decode(), offset + 2 + size


def _str(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def _api_versions(version: int) -> bytes:
    if version > 3:
        # As brokers do: answer in version 0 with the error, and the client retries lower.
        return struct.pack(">h", UNSUPPORTED_VERSION) + _array([struct.pack(">hhh", *api) for api in ADVERTISED])
    if version == 3:
        entries = b"".join(struct.pack(">hhh", *api) + b"\x00" for api in ADVERTISED)
        return struct.pack(">h", 0) + bytes([len(ADVERTISED) + 1]) + entries + struct.pack(">i", 0) + b"\x00"
    answer = struct.pack(">h", 0) + _array([struct.pack(">hhh", *api) for api in ADVERTISED])
    return answer + (struct.pack(">i", 0) if version >= 1 else b"")
