"""The mailboxes' read side: Maildir files read, posted and deleted once stored.

Each read mailbox's ``new/`` is watched with inotify and scanned at start,
after each attach and every :data:`~cryptify.cig.mail.desk.SCAN_INTERVAL`;
a file is deleted only after ``posted`` (or ``key-reused``: an earlier
attempt was stored), and one that can never be delivered is moved to the
quarantine folder beside the mailbox.
"""

from __future__ import annotations

import hashlib
import os
import stat

from twisted.logger import Logger
from twisted.python import filepath

from cryptify.config.cig_model import Mailbox
from cryptify.protocols.message_payload import PayloadError
from cryptify.protocols.umsg import Message, base_uri

from .core import MAX_FILE, MailError, parse, read_route
from .desk import (
    MAX_IN_FLIGHT,
    QUARANTINE_MODE,
    QUARANTINE_SUFFIX,
    RETRY_FIRST,
    RETRY_MAX,
    SCAN_INTERVAL,
    DeskBase,
    ReadFile,
)
from .maildir import fsync_dir, shown

log = Logger(namespace="cryptify.cig.mail")


class ReadSide(DeskBase):
    """Read mailboxes: files in ``new/`` to secure users."""

    def _watch(self) -> None:
        if self.make_inotify is None:
            return
        try:
            notifier = self.make_inotify()
            notifier.startReading()
        except Exception as exc:
            log.warn("no inotify ({why}): the read mailboxes are scanned only", why=str(exc))
            return
        self._notifier = notifier
        from twisted.internet import inotify

        for box in self.mailboxes.read:
            try:
                notifier.watch(
                    filepath.FilePath(os.path.join(box.path, "new")),
                    # IN_CREATE: a delivery agent that link()s the finished file from
                    # tmp/ into new/ (Postfix's virtual and local) makes no other event
                    mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE,
                    callbacks=[lambda *_: self._scan_soon()],
                )
            except Exception as exc:
                log.warn(
                    "cannot watch {path}: {why}; it is scanned every {interval:.0f} s",
                    path=box.path,
                    why=str(exc),
                    interval=SCAN_INTERVAL,
                )

    def _scan_later(self, delay: float) -> None:
        if self._scan_call is not None and self._scan_call.active():
            self._scan_call.cancel()
        self._scan_call = self.clock.callLater(delay, self._periodic)

    def _periodic(self) -> None:
        self._scan_call = None
        self.scan()
        self._scan_later(SCAN_INTERVAL)

    def _scan_soon(self, delay: float = 0) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(delay, self._scan_now)

    def _scan_now(self) -> None:
        self._soon = None
        self.scan()

    def scan(self) -> None:
        """Take up every file waiting in the read mailboxes' ``new/``."""
        if not self.running:
            return
        now = self.clock.seconds()
        next_due: float | None = None
        in_flight = sum(f.in_flight for f in self.files.values())
        for box in self.mailboxes.read:
            new = os.path.join(box.path, "new")
            try:
                names = sorted(e.name for e in os.scandir(new))
            except OSError as exc:
                if box.path not in self.unreadable:  # once, not every scan
                    self.unreadable.add(box.path)
                    log.warn("cannot read {path}: {why}", path=new, why=str(exc))
                continue
            if box.path in self.unreadable:
                self.unreadable.discard(box.path)
                log.info("{path} can be read again", path=new)
            present = set(names)
            for key in [k for k in self.files if k[0] == box.path and k[1] not in present]:
                if not self.files[key].in_flight:
                    del self.files[key]
            for name in names:
                if in_flight >= MAX_IN_FLIGHT:
                    return  # the next answer scans again
                state = self.files.get((box.path, name))
                if state is not None and (state.in_flight or state.not_before > now):
                    if not state.in_flight:
                        due = state.not_before
                        next_due = due if next_due is None else min(next_due, due)
                    continue
                in_flight += self._take(box, name, state)
        if next_due is not None:
            self._scan_soon(max(next_due - now, 0))

    def _take(self, box: Mailbox, name: str, state: ReadFile | None) -> bool:
        """Post one file (prepared first if new); whether a post went out."""
        if state is None:
            state = self._prepare(box, name)
            if state is None:
                return False
            self.files[box.path, name] = state
        if not self._post(
            state.recipient, state.content, state.key, lambda a: self._answered(state, a)
        ):
            return False  # not attached: the next attach scans again
        state.in_flight = True
        state.attempts += 1
        return True

    def _prepare(self, box: Mailbox, name: str) -> ReadFile | None:
        path = os.path.join(box.path, "new", name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warn("cannot look at {path}: {why}", path=shown(path), why=str(exc))
            return None
        if stat.S_ISLNK(info.st_mode):
            self._quarantine(box, name, "a symbolic link")
            return None
        if not stat.S_ISREG(info.st_mode):
            self._quarantine(box, name, "not a regular file")
            return None
        if info.st_size > MAX_FILE:
            self._quarantine(box, name, f"oversized: over {MAX_FILE} octets")
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    self._quarantine(box, name, "not a regular file")
                    return None
                data = os.read(fd, MAX_FILE + 1)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warn("cannot read {path}: {why}", path=shown(path), why=str(exc))
            return None
        crypto = self.crypto()
        if crypto is None:
            return None
        try:
            mail = parse(data)
            route = read_route(box, self.translate_maps, mail, base_uri(crypto.uri))
        except MailError as exc:
            self._quarantine(box, name, str(exc))
            return None
        try:
            content = crypto.seal(route.recipient, mail.body, self.clock.seconds(), route.sender)
        except PayloadError as exc:
            if exc.reason == "wrong-period":
                log.error("cannot seal {path}: {why}; kept", path=shown(path), why=str(exc))
                return None
            self._quarantine(box, name, f"cannot be sent: {exc}")
            return None
        digest = hashlib.sha256(
            b"cryptify cig mail v1\x00"
            + os.fsencode(box.path)
            + b"\x00"
            + os.fsencode(name)
            + b"\x00"
            + hashlib.sha256(data).digest()
        ).digest()
        return ReadFile(box, name, digest[:16], content, route.recipient)

    def _answered(self, state: ReadFile, answer: Message | None) -> None:
        state.in_flight = False
        code = None if answer is None else answer.get("code", answer.type)
        if answer is not None and (answer.type == "posted" or code == "key-reused"):
            stored = answer.get("message", "an earlier attempt")
            self._done(state, stored)
        elif code in ("not-found", "malformed", "too-large"):
            self._quarantine(state.box, state.name, f"refused by the CRS: {code}")
            self.files.pop((state.box.path, state.name), None)
        else:
            delay = min(RETRY_FIRST * 2 ** (state.attempts - 1), RETRY_MAX)
            state.not_before = self.clock.seconds() + delay
            log.warn(
                "{path}/new/{name} not posted ({why}); tried again in {delay:.0f} s",
                path=state.box.path,
                name=shown(state.name),
                why=code or "the connection ended",
                delay=delay,
            )
            self._scan_soon(delay)
            return
        self._scan_soon()

    def _done(self, state: ReadFile, stored: str) -> None:
        path = os.path.join(state.box.path, "new", state.name)
        try:
            os.unlink(path)
            fsync_dir(os.path.join(state.box.path, "new"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("posted {path} but cannot delete it: {why}", path=shown(path), why=str(exc))
        self.files.pop((state.box.path, state.name), None)
        self.posted += 1
        log.info(
            "{path} posted to {to} as message {message}; deleted",
            path=shown(path),
            to=state.recipient,
            message=stored,
        )

    def _quarantine(self, box: Mailbox, name: str, why: str) -> None:
        folder = box.path.rstrip("/") + QUARANTINE_SUFFIX
        source = os.path.join(box.path, "new", name)
        try:
            os.makedirs(folder, exist_ok=True)
            os.chmod(folder, QUARANTINE_MODE)
            target = os.path.join(folder, name)
            n = 1
            while os.path.lexists(target):  # never replace an earlier one
                n += 1
                target = os.path.join(folder, f"{name}.{n}")
            os.rename(source, target)
        except OSError as exc:
            log.error(
                "cannot quarantine {path} ({why}): {error}",
                path=shown(source),
                why=why,
                error=str(exc),
            )
            return
        self.quarantined += 1
        log.warn("{path} moved to {folder}: {why}", path=shown(source), folder=folder, why=why)
