"""The admin web console in headless Chromium (selenium), against a real ``twistd crs``.

Screenshots of each page are saved in the test's temporary directory
(``_trial_temp/.../screenshots``).
"""

from __future__ import annotations

import os
import subprocess
import sys

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from twisted.trial.unittest import SkipTest

from tests.fakes import SECRET, update_bytes
from tests.interop._admin import CrsWithAdmin
from tests.interop._procs import WAIT, free_port, tcp_answers, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class ConsoleBrowserTests(CrsWithAdmin):
    def setUp(self) -> None:
        if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
            raise SkipTest("chromium and chromium-driver are not installed (make debs-test)")
        super().setUp()
        self.crs_cli("create", "account", "acme", "-s", SECRET)
        self.crs_cli("create", "account", "beta", "-s", SECRET)
        self.create_admin("alice")
        self.crs_cli("add", "admin-account", "alice", "acme")
        for authorization in ("statistics", "update"):
            self.crs_cli("add", "admin-account-authorization", "alice", "acme", authorization)
        self.shots = os.path.abspath(os.path.join(self.mktemp(), "screenshots"))
        os.makedirs(self.shots)
        profile = os.path.join(self.dir, "chromium-profile")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1000,800",
        ):
            options.add_argument(flag)
        # the CRS serves its self-signed development certificate
        options.accept_insecure_certs = True
        service = Service(
            executable_path=CHROMEDRIVER, log_output=os.path.join(self.dir, "driver.log")
        )
        self.browser = webdriver.Chrome(options=options, service=service)
        self.addCleanup(self.browser.quit)
        self.browser.set_page_load_timeout(WAIT)
        self.base = f"https://127.0.0.1:{self.port}"

    def shot(self, name: str) -> None:
        path = os.path.join(self.shots, f"{name}.png")
        self.assertTrue(self.browser.save_screenshot(path), path)

    def text(self, ident: str) -> str:
        return str(self.browser.find_element(By.ID, ident).text)

    def wait_text(self, ident: str, needle: str) -> None:
        """Wait until element ``ident`` shows ``needle``.

        A click that posts a form replaces the page; an element found on the
        old page goes stale while the new one loads, so look it up afresh.
        """

        def shows() -> bool:
            try:
                return needle in self.text(ident)
            except (NoSuchElementException, StaleElementReferenceException):
                return False

        wait_for(shows, f"{needle!r} in #{ident}")

    def login(self) -> None:
        self.browser.get(self.base + "/")
        self.shot("01-login")
        with open(os.path.join(self.dir, "alice.secret")) as f:
            secret = f.read().strip()
        self.browser.find_element(By.ID, "admin").send_keys("alice")
        self.browser.find_element(By.ID, "secret").send_keys(secret)
        self.browser.find_element(By.ID, "submit").click()
        wait_for(lambda: self.browser.find_elements(By.ID, "accounts"), "the accounts page")

    def crs_log(self) -> str:
        with open(os.path.join(self.dir, "log", "crs.log")) as f:
            return f.read()

    def test_console_pages(self) -> None:
        """Log in, statistics, apply an update file, the blacklist, log out; only own resources."""
        self.login()
        self.assertEqual(self.text("admin-name"), "alice")
        self.assertIn("acme", self.text("accounts"))
        self.assertNotIn("beta", self.text("accounts"))
        self.shot("02-accounts")
        self.browser.find_element(By.LINK_TEXT, "statistics").click()
        self.browser.find_element(By.ID, "stats-enable").click()
        self.wait_text("stats", "tel-uri")
        self.shot("03-statistics")
        self.assertIn("did stats-enable on acme", self.crs_log())

        update = os.path.join(self.dir, "2026-12.upd")
        with open(update, "wb") as f:
            f.write(update_bytes("acme", period="2026-12", blacklist=("tel:+46700000001",)))
        self.browser.get(self.base + "/accounts/acme/update")
        self.browser.find_element(By.ID, "file").send_keys(update)
        self.browser.find_element(By.ID, "apply").click()
        self.wait_text("applied", "2026-12")
        self.shot("04-update-applied")
        self.assertIn("2026-12", self.crs_cli("show", "updates"))

        self.browser.get(self.base + "/accounts/acme/blacklist")
        self.shot("05-blacklist")
        self.assertIn("URI", self.text("blacklist"))

        loaded = self.browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        for url in loaded:
            self.assertTrue(str(url).startswith(self.base + "/"), url)

        self.browser.get(self.base + "/accounts/beta/stats")
        self.assertIn("not-your-account", self.text("refused"))
        self.shot("06-refused")

        self.browser.get(self.base + "/")
        self.browser.find_element(By.ID, "logout").click()
        wait_for(lambda: self.browser.find_elements(By.ID, "login"), "the login form")
        self.browser.get(self.base + "/accounts/acme/stats")
        self.assertTrue(self.browser.find_elements(By.ID, "login"))
        for name in sorted(os.listdir(self.shots)):
            with open(os.path.join(self.shots, name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)

    def test_cross_site_form_refused(self) -> None:
        """A form on another site posting to the console while logged in changes nothing."""
        self.login()
        attacker = os.path.join(self.dir, "attacker")
        os.makedirs(attacker)
        with open(os.path.join(attacker, "index.html"), "w") as f:
            f.write(
                f'<form method="post" action="{self.base}/accounts/acme/stats/clear">'
                '<input type="hidden" name="csrf" value="guess">'
                '<button id="go" type="submit">win a prize</button></form>'
            )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            cwd=attacker,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)
        wait_for(lambda: tcp_answers(port), "the attacker's page server")
        self.browser.get(f"http://localhost:{port}/index.html")
        self.browser.find_element(By.ID, "go").click()
        wait_for(lambda: "/accounts/acme/stats/clear" in self.crs_log(), "the refusal in crs.log")
        self.shot("07-cross-site-refused")
        log = self.crs_log()
        self.assertNotIn("did stats-clear", log)
        self.assertIn(
            "refused POST '/accounts/acme/stats/clear' from 127.0.0.1: bad-csrf-token", log
        )
