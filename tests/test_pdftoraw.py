"""
packaging/pdftoraw, the cig package's tool for the CIG manual's key step
of CMS 3.5.2 or older (`pdftoraw <pdf-qr-file> > /opt/cig/userdata/cig.raw`):
the text of the one QR code in a PDF, or a clear refusal that prints
nothing. Uses the Debian tools `make test` installs (poppler-utils,
zbar-tools, and qrencode and img2pdf to make the PDFs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PDFTORAW = os.path.join(TOP, "packaging", "pdftoraw")
#: Like a key material line: base64 text, a couple of kilobytes.
BLOB = "QUJD" * 540 + "ZA=="

#: A one-page PDF with nothing on the page.
BLANK_PDF = b"""%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >> endobj
trailer << /Root 1 0 R >>
%%EOF
"""


class PdfToRawTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def qr_pdf(self, name: str, *texts: str) -> str:
        """A PDF with one page per text, each a QR code of it."""
        images = []
        for i, text in enumerate(texts):
            with open(self.path(f"{name}{i}.txt"), "w") as f:
                f.write(text + "\n")
            image = self.path(f"{name}{i}.png")
            subprocess.run(["qrencode", "-r", self.path(f"{name}{i}.txt"), "-o", image], check=True)
            images.append(image)
        pdf = self.path(f"{name}.pdf")
        subprocess.run(["img2pdf", *images, "-o", pdf], check=True, capture_output=True)
        return pdf

    def pdftoraw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PDFTORAW, *args], capture_output=True, text=True, timeout=120, check=False
        )

    def test_key_line(self) -> None:
        """The QR code's line, with its newline, as cig.raw wants it."""
        result = self.pdftoraw(self.qr_pdf("keys", BLOB))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, BLOB + "\n")

    def test_no_code(self) -> None:
        with open(self.path("blank.pdf"), "wb") as f:
            f.write(BLANK_PDF)
        result = self.pdftoraw(self.path("blank.pdf"))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertIn("no QR code found", result.stderr)

    def test_two_codes(self) -> None:
        """Two codes cannot both be the key: refused, nothing printed."""
        result = self.pdftoraw(self.qr_pdf("two", "first", "second"))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertIn("expected one QR code of one line, found 2 lines", result.stderr)

    def test_not_a_pdf(self) -> None:
        with open(self.path("keys.txt"), "w") as f:
            f.write(BLOB)
        result = self.pdftoraw(self.path("keys.txt"))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertIn("not a readable PDF", result.stderr)

    def test_usage_and_missing(self) -> None:
        self.assertEqual(self.pdftoraw().returncode, 2)
        result = self.pdftoraw(self.path("none.pdf"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("no such file", result.stderr)
