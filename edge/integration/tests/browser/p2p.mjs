// Two headless Chromium pages play the edge's demo stream with hls.js + p2p-media-loader 2.x,
// the edge's WebTorrent tracker in between: page A fetches from the edge over HTTP, page B
// (which prefers peers) gets segments from A over WebRTC. Prints one JSON line of both pages'
// stats; edge-integration/tests/browser.rs starts the edge and checks them.
//
//   node p2p.mjs <edge http base, e.g. http://127.0.0.1:8080> <tracker ws url with access_token>
import http from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";

const [edge, tracker] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };

// The player pages and their modules, from another origin than the edge (as a platform's site).
const site = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  let file;
  if (url.pathname === "/") file = path.join(here, "page.html");
  else if (url.pathname.startsWith("/m/") && !url.pathname.includes(".."))
    file = path.join(here, "node_modules", url.pathname.slice(3));
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => site.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${site.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
    // Plain host candidates (no mDNS names a container cannot resolve).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
  ],
});
const deadline = Date.now() + 60_000;
try {
  const context = await browser.newContext();
  const open = async (windows) => {
    const page = await context.newPage();
    const q = new URLSearchParams({
      src: `${edge}/vod/movies/demo/index.m3u8`,
      tracker,
      swarm: "edge-p2p-test",
      ...windows,
    });
    await page.goto(`${origin}/?${q}`);
    return page;
  };
  const stats = (page) => page.evaluate(() => ({ ...window.stats, time: document.getElementById("video").currentTime }));
  // A fetches everything ahead over HTTP; B asks peers for all but the next half second.
  const a = await open({ highDemand: "15", http: "60", p2p: "60" });
  while (Date.now() < deadline && (await stats(a)).http < 300_000) await a.waitForTimeout(200);
  const b = await open({ highDemand: "0.5", http: "1", p2p: "60" });
  let sa, sb;
  while (Date.now() < deadline) {
    [sa, sb] = [await stats(a), await stats(b)];
    if ((sa.ended && sb.ended) || sa.fatal || sb.fatal) break;
    await a.waitForTimeout(250);
  }
  console.log(JSON.stringify({ a: sa, b: sb }));
} finally {
  await browser.close();
  site.close();
}
