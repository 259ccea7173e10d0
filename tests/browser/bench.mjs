// Full page loads in headless Chromium for scripts/bench-console.sh: from navigation
// to the run list drawn (rows on the page) and to a run page drawn (its status shown).
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const n = Number(process.env.N || 20);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext();
const page = await context.newPage();
await page.goto(`${base}/`);
await page.fill("#token", process.env.CONSOLE_TOKEN);
await page.click("button[type=submit]");
await page.waitForSelector("[data-test=run-row]");

async function timed(url, selector) {
  const times = [];
  for (let i = 0; i < n; i++) {
    await page.goto("about:blank");
    const start = performance.now();
    await page.goto(url);
    await page.waitForSelector(selector);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return { full_load_ms_median: +times[Math.floor(n / 2)].toFixed(1), full_load_ms_p95: +times[Math.min(n - 1, Math.floor(n * 0.95))].toFixed(1) };
}

console.log(JSON.stringify({ run_list_browser: await timed(`${base}/#/`, "[data-test=run-row]") }));
console.log(JSON.stringify({ run_page_browser: await timed(`${base}/#/runs/${process.env.RUN_ID}`, "[data-test=run-status] .pill") }));
await browser.close();
