"""Take docs/serve.png: the vistok serve page in headless Chromium with a bundled sample uploaded, reduced, and one
merged token hovered. Needs the serve extra, selenium, and Debian's chromium and chromium-driver.

usage: .venv/bin/python scripts/serve_screenshot.py [--out docs/serve.png]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from vistok.samples import sample_images
from vistok.serve import background

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    parser.add_argument("--image", default="chelsea.jpg", help="a bundled sample's file name")
    parser.add_argument("--tokenizer", default="patch")
    parser.add_argument("--reducer", default="tome")
    parser.add_argument("--amount", default="0.25")
    parser.add_argument("--size", default="1360,1000", help="browser window WIDTH,HEIGHT")
    args = parser.parse_args()
    image = next(p for p in sample_images() if p.name == args.image)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={args.size}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        with background() as url:
            browser.get(url)
            wait = WebDriverWait(browser, 120)
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            Select(browser.find_element(By.ID, "tokenizer")).select_by_value(args.tokenizer)
            amount = browser.find_element(By.ID, "amount")
            amount.clear()
            amount.send_keys(args.amount)
            Select(browser.find_element(By.ID, "reducer")).select_by_value(args.reducer)
            browser.find_element(By.ID, "file").send_keys(str(image))
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            status = browser.find_element(By.ID, "status").text
            if browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") != "done":
                raise SystemExit(f"the page reports: {status}")
            # hover the token that stands for the most patches, so the tooltip shows a group
            index = browser.execute_script(
                "return tokens.reduce((best, t) => (t.cells.length > tokens[best].cells.length ? t.index : best), 0);")
            shape = browser.find_element(By.CSS_SELECTOR, f'#overlay .token[data-index="{index}"]')
            ActionChains(browser).move_to_element(shape).perform()
            wait.until(lambda d: d.find_element(By.ID, "tip").is_displayed())
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
    finally:
        browser.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
