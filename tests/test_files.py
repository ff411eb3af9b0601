"""
Tests for L{cryptify.files}: the one atomic file write every server and tool
uses.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from cryptify.files import TEMP_SUFFIX, write_atomically


class WriteAtomicallyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "secret")

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def mode(self) -> int:
        return stat.S_IMODE(os.stat(self.path).st_mode)

    def test_writes_with_exact_mode(self) -> None:
        """
        The file holds the data and has exactly the mode asked for, whatever
        the umask (a permissive one does not widen it, a strict one does not
        narrow it); nothing else is left in the directory.
        """
        for umask, mode in ((0o000, 0o600), (0o077, 0o640), (0o022, 0o644)):
            old = os.umask(umask)
            try:
                write_atomically(self.path, b"data %o" % mode, mode)
            finally:
                os.umask(old)
            self.assertEqual((self.read(), self.mode()), (b"data %o" % mode, mode))
        self.assertEqual(os.listdir(self.dir), ["secret"])

    def test_replaces_existing(self) -> None:
        """
        An existing file is replaced by a new inode (readers holding the old
        one see the old content whole), with the new mode.
        """
        write_atomically(self.path, b"old", 0o644)
        with open(self.path, "rb") as reader:
            write_atomically(self.path, b"new" * 10_000, 0o600)
            self.assertEqual(reader.read(), b"old")
        self.assertEqual((self.read(), self.mode()), (b"new" * 10_000, 0o600))

    def test_failure_leaves_target_and_no_temporary(self) -> None:
        """
        When the write fails before the rename, the old file is untouched
        and no temporary file is left behind.
        """
        write_atomically(self.path, b"old", 0o600)

        def fail(fd: int) -> None:
            raise OSError(28, "No space left on device")

        self.assertRaises(OSError, write_atomically, self.path, b"new", 0o600, prepare=fail)
        self.assertEqual(self.read(), b"old")
        self.assertEqual(os.listdir(self.dir), ["secret"])

    def test_prepare_sees_the_temporary_file(self) -> None:
        """
        C{prepare} gets the descriptor of the temporary file, a hidden
        C{.tmp} file next to the target, before it is renamed.
        """
        seen: list[tuple[list[str], bytes]] = []

        def look(fd: int) -> None:
            os.lseek(fd, 0, os.SEEK_SET)
            seen.append((os.listdir(self.dir), os.read(fd, 100)))

        write_atomically(self.path, b"content", 0o600, prepare=look)
        [(names, content)] = seen
        self.assertEqual(content, b"content")
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].startswith(".secret.") and names[0].endswith(TEMP_SUFFIX))
        self.assertEqual(os.listdir(self.dir), ["secret"])

    def test_missing_directory(self) -> None:
        """
        A directory that does not exist is an C{OSError}, nothing is created.
        """
        path = os.path.join(self.dir, "nowhere", "file")
        self.assertRaises(OSError, write_atomically, path, b"x", 0o600)
        self.assertEqual(os.listdir(self.dir), [])

    def test_relative_target_relative_temporary(self) -> None:
        """
        A relative target gets a temporary file named relative to the same
        directory, never an absolute path: in another mount namespace an
        absolute path may reach the directory through another mount, where
        the rename would fail with EXDEV.
        """
        renames: list[tuple[str, str]] = []
        real_replace = os.replace

        def replace(src: str, dst: str) -> None:
            renames.append((src, dst))
            real_replace(src, dst)

        self.patch(os, "replace", replace)
        old = os.getcwd()
        os.chdir(self.dir)
        try:
            write_atomically("plain", b"p", 0o600)
            os.mkdir("sub")
            write_atomically(os.path.join("sub", "inner"), b"i", 0o600)
        finally:
            os.chdir(old)
        [(src1, dst1), (src2, dst2)] = renames
        self.assertEqual((os.path.dirname(src1), dst1), ("", "plain"))
        self.assertEqual((os.path.dirname(src2), dst2), ("sub", os.path.join("sub", "inner")))
        with open(os.path.join(self.dir, "sub", "inner"), "rb") as f:
            self.assertEqual(f.read(), b"i")
