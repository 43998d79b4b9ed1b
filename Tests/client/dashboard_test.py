"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium through chromium-driver.

Run by ServerTests (DashboardTests.swift):

    BALSAM_TEST_SERVER=http://127.0.0.1:PORT BALSAM_TEST_USERS=ada:pw,bob:pw BALSAM_TEST_SCREENSHOT=FILE.png \
        python dashboard_test.py

For each user: opens /dashboard (sent to the login page), logs in through the form, reads the page, takes a
screenshot (the first user's, to BALSAM_TEST_SCREENSHOT), logs out. Every request the browser made must have gone
to the server on loopback (any other address meets a dead proxy and is listed). Prints one JSON line per user with
what the page showed.
"""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["BALSAM_TEST_SERVER"]
users = [pair.split(":", 1) for pair in os.environ["BALSAM_TEST_USERS"].split(",")]

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 # Anything not on loopback goes to a proxy that is not there.
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"):
    options.add_argument(argument)
options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 30)
failed = False
try:
    for k, (name, password) in enumerate(users):
        driver.get(URL + "/dashboard")
        wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
        login_url = driver.current_url
        driver.find_element(By.NAME, "username").send_keys(name)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "sites")))
        sites = []
        for row in driver.find_elements(By.CSS_SELECTOR, "#sites tr")[1:]:
            cells = row.find_elements(By.TAG_NAME, "td")
            states = {c.get_attribute("data-state"): int(c.text) for c in cells if c.get_attribute("data-state")}
            total = int(row.find_element(By.CSS_SELECTOR, "td[data-total]").text)
            sites.append({"name": cells[0].text, "total": total, "states": states})
        seen = {
            "user": name,
            "login_page": login_url,
            "title": driver.title,
            "sites": sites,
            "finished": int(driver.find_element(By.CSS_SELECTOR, "[data-finished]").text),
            "busy": float(driver.find_element(By.CSS_SELECTOR, "[data-busy]").text),
            "held": float(driver.find_element(By.CSS_SELECTOR, "[data-held]").text),
            "failures": [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                         for r in driver.find_elements(By.CSS_SELECTOR, "#failures tr")[1:]],
            "batch_jobs": len(driver.find_elements(By.CSS_SELECTOR, "#batch-jobs tr")) - 1,
            "charts": len(driver.find_elements(By.CSS_SELECTOR, "svg path[data-series]")),
            # Each chart's time axis: its labels, left to right.
            "axes": [[t.text for t in svg.find_elements(By.CSS_SELECTOR, "text[text-anchor=middle]")]
                     for svg in driver.find_elements(By.TAG_NAME, "svg")],
            "dashed": [p.get_attribute("data-series")
                       for p in driver.find_elements(By.CSS_SELECTOR, "svg path[stroke-dasharray]")],
            "refresh": driver.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]").get_attribute("content"),
            "text": driver.find_element(By.TAG_NAME, "body").text,
        }
        if k == 0 and os.environ.get("BALSAM_TEST_SCREENSHOT"):
            seen["screenshot"] = driver.save_screenshot(os.environ["BALSAM_TEST_SCREENSHOT"])
        driver.find_element(By.CSS_SELECTOR, "header form button").click()
        wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
        # After logging out, the dashboard sends the browser back to the login page.
        driver.get(URL + "/dashboard")
        seen["after_logout"] = driver.current_url
        print(json.dumps(seen), flush=True)
    requested = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    strangers = sorted(u for u in requested if not u.startswith(URL) and not u.startswith("data:"))
    if strangers or not requested:
        print("FAILED: requests beyond the server:", strangers or "none seen at all", file=sys.stderr)
        failed = True
    print(json.dumps({"requests": len(requested)}), flush=True)
finally:
    driver.quit()
sys.exit(1 if failed else 0)
