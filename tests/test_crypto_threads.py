"""The C crypto code (SAKKE decapsulation, ECCSI verification) called from
several threads at once: cffi releases the GIL around the calls, so they
really run together; every answer must still be right."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import eccsi, sakke
from cryptify.crypto.errors import DecapsulationFailed, SignatureInvalid

THREADS = 8


class ThreadTests(SynchronousTestCase):
    def test_verify_in_threads(self) -> None:
        """Good and bad signatures from several signers, verified by eight
        threads at once with Y recomputed every time, give the same answers
        as one thread."""
        kms = eccsi.EccsiKms.generate()
        jobs = []
        for index in range(16):
            identity = b"2026-12\0tel:+4670%07d\0" % index
            ssk, pvt = kms.issue(identity)
            signer = eccsi.EccsiSigner(kms.kpak, identity, ssk, pvt)
            message = b"message %d" % index
            jobs.append((identity, message, signer.sign(message), True))
            jobs.append((identity, message + b"!", signer.sign(message), False))

        def run(job: tuple[bytes, bytes, bytes, bool]) -> bool:
            identity, message, signature, _ = job
            eccsi._y_point.cache_clear()
            try:
                eccsi.verify(kms.kpak, identity, message, signature)
            except SignatureInvalid:
                return False
            return True

        self.addCleanup(eccsi._y_point.cache_clear)
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(run, jobs * 4))
        self.assertEqual(results, [job[3] for job in jobs] * 4)

    def test_decapsulate_in_threads(self) -> None:
        """Encapsulated data for one receiver, good and tampered, opened by
        eight threads at once."""
        kms = sakke.SakkeKms.generate()
        z = kms.public_key()
        identity = b"2026-12\0tel:+46701234567\0"
        receiver = sakke.SakkeReceiver(z, identity, kms.issue_rsk(identity))
        jobs = []
        for _ in range(6):
            data, ssv = sakke.encapsulate(z, identity)
            jobs.append((data, ssv))
            jobs.append((data[:-1] + bytes([data[-1] ^ 1]), None))

        def run(job: tuple[bytes, bytes | None]) -> bytes | None:
            try:
                return receiver.decapsulate(job[0])
            except DecapsulationFailed:
                return None

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(run, jobs * 3))
        self.assertEqual(results, [job[1] for job in jobs] * 3)
