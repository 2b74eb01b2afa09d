"""The console in a real browser (Debian's chromium, driven by selenium through the system
chromedriver). Run by e2e/tests/console_browser.rs against a live pipeline; it prints one JSON
object of what it saw, which the Rust test asserts on, and writes a screenshot of each page.

Environment: CONSOLE_URL (ingest's base URL), CONSOLE_KEY (a key with scope=admin), PHOTO (a
corpus photo to upload), NOT_AN_IMAGE (a file the API refuses), DEAD_LETTER (the partition:offset
of a dead letter to redrive), SHOTS (the screenshot folder), CHROMEDRIVER, CHROMIUM.
"""

import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["CONSOLE_URL"].rstrip("/")
SHOTS = os.environ["SHOTS"]
WAIT = 120  # seconds: a 4 MP photo's variants on a busy two-core machine


def local_file(name):
    """A file to hand to a file input: chromedriver refuses paths that are not canonical
    (`..`, symlinks), and the corpus is reached as `<checkout>/e2e/../../shared/corpus`."""
    return os.path.realpath(os.environ[name])


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        # This machine's network is closed: no background calls to Google's hosts.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='imgpipe-chromium-')}",
    ]:
        options.add_argument(flag)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def shot(driver, name):
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def main():
    seen = {}
    driver = browser()
    # A page that is being replaced has elements that go stale: look again.
    wait = WebDriverWait(
        driver, WAIT, ignored_exceptions=[NoSuchElementException, StaleElementReferenceException]
    )
    try:
        # Signing in: the console sends a signed-out visitor to the sign-in page, then back.
        driver.get(f"{BASE}/console/upload")
        wait.until(EC.presence_of_element_located((By.ID, "key")))
        seen["sign_in_url"] = driver.current_url
        shot(driver, "01-sign-in")
        driver.find_element(By.ID, "key").send_keys(os.environ["CONSOLE_KEY"], Keys.ENTER)
        wait.until(EC.presence_of_element_located((By.ID, "drop")))
        seen["after_sign_in"] = driver.current_url
        # Gone if the page reloads: proof that "ready" arrives without one.
        driver.execute_script("window.imgpipeMarker = 'kept';")

        # Keyboard: the first Tab reaches the skip link.
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        seen["first_tab"] = driver.switch_to.active_element.text

        # A photo dropped on the drop zone (a drop event carrying the file, as a drag from the
        # desktop makes), and a file that is no image chosen with the file picker.
        driver.execute_script(
            "const i = document.createElement('input'); i.type = 'file'; i.id = 'dropped';"
            "i.style.display = 'none'; document.body.append(i);"
        )
        driver.find_element(By.ID, "dropped").send_keys(local_file("PHOTO"))
        driver.execute_script(
            "const files = document.getElementById('dropped').files;"
            "const dt = new DataTransfer(); for (const f of files) dt.items.add(f);"
            "document.getElementById('drop').dispatchEvent("
            "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));"
        )
        driver.find_element(By.ID, "files").send_keys(local_file("NOT_AN_IMAGE"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.upload")) == 2)
        shot(driver, "02-uploading")
        refused = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "li.upload[data-status='refused']"))
        )
        seen["refused_text"] = refused.find_element(By.CLASS_NAME, "state").text
        # Ready without a reload: the status stream turns it, and the thumbnail appears.
        ready = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "li.upload[data-status='ready']"))
        )
        wait.until(
            lambda d: d.execute_script(
                "const img = document.querySelector(\"li.upload[data-status='ready'] img\");"
                "return img && img.dataset.loaded === 'true' && img.complete"
                "  && img.naturalWidth > 0;"
            )
        )
        seen["uploaded_id"] = ready.get_attribute("data-id")
        seen["thumb_width"] = driver.execute_script(
            "return document.querySelector(\"li.upload[data-status='ready'] img\").naturalWidth;"
        )
        seen["marker"] = driver.execute_script("return window.imgpipeMarker || null;")
        seen["upload_page_url"] = driver.current_url
        shot(driver, "03-ready")

        # Its page: the timeline, every event with its place in the log.
        ready.find_element(By.LINK_TEXT, "details").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "table.timeline tbody tr")))
        rows = driver.find_elements(By.CSS_SELECTOR, "table.timeline tbody tr")
        seen["timeline"] = [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]
        seen["variant_links"] = [
            a.text for a in driver.find_elements(By.CSS_SELECTOR, "ul.variants a")
        ]
        shot(driver, "04-image")

        # The gallery, wide and at a phone's 360 px.
        driver.get(f"{BASE}/console")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "ul.gallery")))
        seen["gallery_ids"] = [
            e.text for e in driver.find_elements(By.CSS_SELECTOR, "ul.gallery .id")
        ]
        # Each card's BlurHash, drawn by the server as an 8x6 bitmap.
        seen["gallery_placeholders"] = wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll(\"ul.gallery img[src*='placeholder.bmp']\"))"
                "  .filter(img => img.complete && img.naturalWidth === 8).length;"
            )
        )
        # And over it, once loaded, the smallest variant from the object store.
        seen["gallery_thumbs"] = wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('ul.gallery img.thumb'))"
                "  .filter(img => img.complete && img.naturalWidth === 256).length;"
            )
        )
        shot(driver, "05-gallery")
        driver.set_window_size(360, 800)
        driver.get(f"{BASE}/console")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "ul.gallery")))
        seen["narrow_overflow"] = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth;"
        )
        shot(driver, "06-gallery-360px")
        driver.set_window_size(1280, 900)

        # The operator's overview.
        driver.get(f"{BASE}/console/operator")
        wait.until(EC.presence_of_element_located((By.ID, "latency")))
        seen["lag_tables"] = len(driver.find_elements(By.CSS_SELECTOR, "table.lag"))
        shot(driver, "07-operator")

        # A dead letter: chosen, previewed (nothing moves), then redriven.
        driver.get(f"{BASE}/console/operator/dead-letters")
        letter = os.environ["DEAD_LETTER"]
        box = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, f"input[name='letter'][value='{letter}']"))
        )
        seen["pending_before"] = driver.find_element(By.ID, "pending").text
        shot(driver, "08-dead-letters")
        box.click()
        driver.find_element(By.CSS_SELECTOR, "button[value='preview']").click()
        outcome = wait.until(EC.presence_of_element_located((By.ID, "outcome")))
        seen["preview"] = outcome.text
        shot(driver, "09-redrive-preview")
        driver.find_element(By.CSS_SELECTOR, "button[value='redrive']").click()
        wait.until(lambda d: "moved back" in d.find_element(By.ID, "outcome").text
                   and "would" not in d.find_element(By.ID, "outcome").text)
        seen["redrive"] = driver.find_element(By.ID, "outcome").text
        shot(driver, "10-redriven")
        driver.get(f"{BASE}/console/operator/dead-letters")
        seen["pending_after"] = wait.until(
            EC.presence_of_element_located((By.ID, "pending"))
        ).text
    except Exception as error:  # what the page looked like, then the failure
        shot(driver, "failure")
        seen["failure"] = f"{type(error).__name__}: {error}"
        seen["failure_url"] = driver.current_url
        seen["failure_page"] = driver.page_source[:4000]
    finally:
        driver.quit()
    json.dump(seen, sys.stdout)
    return 1 if "failure" in seen else 0


if __name__ == "__main__":
    sys.exit(main())
