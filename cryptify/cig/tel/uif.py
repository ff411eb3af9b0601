"""The CIG's secure side (UIF): the gateway attached to its CRS as its own number.

The keystore directory (``crs { keystore }``) holds the CIG's key material
as ``.ks.tel:NUMBER`` (:func:`~cryptify.crypto.keymaterial.write_keystore`).
:class:`Uif` loads it at start and keeps that URI attached to the CRS with an
:class:`~cryptify.client.connection.AttachingClient` (TLS, reconnect with
backoff and jitter).  Without a keystore it stays idle and ``status`` says
``Crypto state NO KEYS``.

New key material arrives as the one-line blob ``cryptify-kms cig-keys``
prints: through ``cig-cli set-key`` (:meth:`Uif.set_key`), or, for key
material from older management systems, as a ``cig.raw`` file left in the
keystore directory, consumed at start the same way (keystore written,
``cig.raw`` deleted).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime
from twisted.logger import Logger

from cryptify import __version__
from cryptify.client.connection import AttachingClient, ConnectionEnded, Connector, Event
from cryptify.client.session import Attached, ClientSession, Disconnected, Refused
from cryptify.crypto.errors import CryptoError, KeyFileError
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import KIND_CIG, KeyMaterial, load_keystore, write_keystore
from cryptify.protocols.umsg import Message

log = Logger(namespace="cryptify.cig.uif")

#: The legacy key material file consumed at start.
LEGACY_FILE = "cig.raw"
#: Largest ``cig.raw`` read.
MAX_LEGACY = 1 << 20
#: Keystore file name prefix.
KEYSTORE_PREFIX = ".ks."
#: Longest reconnect delay, in seconds.
MAX_RECONNECT_DELAY = 60.0

OK = "OK"
NO_KEYS = "NO KEYS"
EXPIRED = "EXPIRED"

SessionMaker = Callable[[KeyMaterial], Callable[[Callable[[Message], None]], ClientSession]]


@attrs.frozen
class UmsgInfo:
    """What ``status`` shows of the secure side."""

    public_id: str = "-"
    security_domain: str = "-"
    crypto_state: str = NO_KEYS
    crypto_periods: tuple[str, ...] = ()

    def as_tuple(self) -> tuple[str, str, str, tuple[str, ...]]:
        """The fields in ``CigState.umsg_info`` order."""
        return (self.public_id, self.security_domain, self.crypto_state, self.crypto_periods)


def find_keystore(directory: str) -> str | None:
    """The URI of the newest ``.ks.URI`` file in ``directory`` (None if there is none)."""
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(KEYSTORE_PREFIX)]
    except OSError:
        return None
    files = [e for e in entries if e.is_file(follow_symlinks=False) and ".tmp" not in e.name]
    if not files:
        return None
    newest = max(files, key=lambda e: (e.stat(follow_symlinks=False).st_mtime, e.name))
    return newest.name[len(KEYSTORE_PREFIX) :]


def store_blob(directory: str, blob: str) -> KeyMaterial:
    """Validate a ``cryptify-kms cig-keys`` blob and write it as the keystore.

    @raise KeyFileError: if the blob is not valid CIG key material or the
        keystore cannot be written.
    """
    material = KeyMaterial.from_blob(blob)
    if material.kind != KIND_CIG:
        raise KeyFileError(
            f"key material is for a {material.kind}, not a CIG (use cryptify-kms cig-keys)"
        )
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {directory}: {exc.strerror}") from None
    write_keystore(directory, material)
    return material


def consume_legacy(directory: str) -> KeyMaterial | None:
    """Turn a ``cig.raw`` in ``directory`` into the keystore and delete it.

    Returns the key material, or None when there is no ``cig.raw``.

    @raise KeyFileError: if ``cig.raw`` is unreadable or invalid (it is kept).
    """
    path = Path(directory) / LEGACY_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LEGACY + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_LEGACY:
        raise KeyFileError(f"{path} is too large to be key material")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not key material text") from None
    material = store_blob(directory, text)
    try:
        path.unlink()
    except OSError as exc:
        raise KeyFileError(f"wrote the keystore but cannot delete {path}: {exc.strerror}") from None
    return material


class Uif(service.Service):
    """Keeps the CIG's number attached to its CRS while key material is present."""

    name = "uif"

    def __init__(
        self,
        clock: IReactorTime,
        keystore: str,
        host: str,
        port: int,
        connect: Connector,
        make_session: SessionMaker,
    ) -> None:
        self.clock = clock
        self.keystore = keystore
        self.host = host
        self.port = port
        self.connect = connect
        self.make_session = make_session
        self.material: KeyMaterial | None = None
        self.client: AttachingClient | None = None
        self.connected = False
        self._last_failure: str | None = None
        #: Every event of the attached session, for the calls (:mod:`cryptify.cig.tel.core`).
        self.on_call_event: Callable[[Event], None] | None = None

    # status

    def info(self) -> UmsgInfo:
        """Public ID, security domain, crypto state and periods, for ``status``."""
        material = self.material
        if material is None:
            return UmsgInfo()
        current = period_of(self.clock.seconds())
        state = OK if any(k.period >= current for k in material.periods) else EXPIRED
        periods = tuple(k.shown for k in material.periods)
        return UmsgInfo(material.uri, material.account, state, periods)

    def session(self) -> ClientSession | None:
        """The current connection's UMSG session (None while not connected)."""
        client = self.client
        if client is None or client.proto is None:
            return None
        return client.proto.session

    # lifecycle

    def startService(self) -> None:
        service.Service.startService(self)
        try:
            material = consume_legacy(self.keystore)
        except CryptoError as exc:
            log.error("cannot use {file}: {error}", file=LEGACY_FILE, error=str(exc))
            material = None
        if material is not None:
            log.info(
                "consumed {file}: keystore written for {uri}", file=LEGACY_FILE, uri=material.uri
            )
        else:
            material = self._load()
        if material is None:
            log.warn("no keystore in {dir}: not attaching (use cig-cli set-key)", dir=self.keystore)
            return
        self.material = material
        self._start_client()

    def _load(self) -> KeyMaterial | None:
        uri = find_keystore(self.keystore)
        if uri is None:
            return None
        try:
            return load_keystore(self.keystore, uri)
        except CryptoError as exc:
            log.error("cannot load the keystore for {uri}: {error}", uri=uri, error=str(exc))
            return None

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        client, self.client = self.client, None
        self.connected = False
        if client is None:
            return defer.succeed(None)
        return client.stop()

    # key material

    def set_key(self, blob: str) -> KeyMaterial:
        """Validate and store new key material, then (re)attach with it.

        @raise KeyFileError: if the blob is invalid or cannot be stored.
        """
        material = store_blob(self.keystore, blob)
        log.info(
            "key material set for {uri} ({account}), periods {periods}",
            uri=material.uri,
            account=material.account,
            periods=" ".join(k.period for k in material.periods),
        )
        self.material = material
        if self.running:
            self._restart()
        return material

    def _restart(self) -> None:
        old, self.client = self.client, None
        self.connected = False
        done = old.stop() if old is not None else defer.succeed(None)

        def start(_: object) -> None:
            if self.running and self.client is None:
                self._start_client()

        done.addCallback(start)

    def _start_client(self) -> None:
        material = self.material
        assert material is not None
        client = AttachingClient(
            self.clock,
            self._connect,
            self.make_session(material),
            self.host,
            self.port,
            lambda event: None,
            max_delay=MAX_RECONNECT_DELAY,
            # A gateway runs unattended: after "replaced" it waits the whole
            # MAX_RECONNECT_DELAY rather than stopping (docs/umsg.md, section 4).
            stop_on_replaced=False,
        )
        client.on_event = lambda event: self._event(client, event)
        self.client = client
        log.info(
            "attaching {uri} to the CRS at {host}:{port}",
            uri=material.uri,
            host=self.host,
            port=self.port,
        )
        client.start()

    def _connect(
        self, host: str, port: int, factory: IProtocolFactory
    ) -> defer.Deferred[IProtocol]:
        # A connector that raises (a missing CA file) must not kill the service.
        try:
            return self.connect(host, port, factory)
        except Exception as exc:
            return defer.fail(exc)

    def _event(self, client: AttachingClient, event: Event) -> None:
        if client is not self.client:
            return
        if isinstance(event, Attached):
            self.connected = True
            self._last_failure = None
            log.info("attached {uri} to {crs}", uri=event.uri, crs=event.crs)
        elif isinstance(event, Refused):
            self.connected = False
            log.warn("attach refused: {code} ({reason})", code=event.code, reason=event.reason)
        elif isinstance(event, Disconnected):
            self.connected = False
            log.warn("disconnected: {code} ({reason})", code=event.code, reason=event.reason)
        elif isinstance(event, ConnectionEnded):
            if self.connected:
                log.warn("connection to the CRS ended: {why}", why=event.why)
            elif event.why != self._last_failure:
                # each new reason once, not every retry
                log.warn("cannot attach to the CRS: {why}", why=event.why)
            self._last_failure = event.why
            self.connected = False
        if self.on_call_event is not None:
            self.on_call_event(event)


def app_name() -> str:
    """What the CIG presents as its application to the CRS."""
    return f"cig/{__version__}"
