"""A real headless Chromium for tests, driven by Selenium through the system's chromedriver.

`HeadlessChromium` starts the distribution's ``chromium`` with the distribution's
``chromedriver`` (never Selenium Manager, which would download a browser), with a fixed window
size and a throw-away profile, and quits it on exit::

    with HeadlessChromium(width=800, height=600) as browser:
        browser.driver.get(url)
        png = browser.screenshot_rgb()

Skips the calling test (``pytest.skip``) when selenium, chromium or chromedriver is missing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def find_browser() -> tuple[str, str] | None:
    """(browser, driver) executables on PATH, or None."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver = shutil.which(DRIVER) or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    return (browser, driver) if browser and driver else None


class HeadlessChromium:
    """One headless Chromium with a `width` x `height` viewport; `driver` is the Selenium
    WebDriver once started."""

    def __init__(self, width: int = 800, height: int = 600) -> None:
        self.width, self.height = width, height
        self.driver = None
        self._profile: tempfile.TemporaryDirectory | None = None

    def start(self) -> HeadlessChromium:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            pytest.skip("selenium is not installed (the 'test' extra installs it)")
        found = find_browser()
        if found is None:
            pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
        browser, driver = found
        self._profile = tempfile.TemporaryDirectory(prefix="avatarforcing-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in (
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI, where the sandbox refuses to start
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            f"--window-size={self.width},{self.height}",
            f"--user-data-dir={self._profile.name}",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(30)
        return self

    def screenshot_rgb(self) -> np.ndarray:
        """The viewport now, RGB ``uint8 (h, w, 3)``."""
        data = np.frombuffer(self.driver.get_screenshot_as_png(), np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def stop(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            finally:
                self.driver = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def __enter__(self) -> HeadlessChromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
