import { test as base, expect } from '@playwright/test';

/**
 * The `test` every spec imports. Two automatic fixtures:
 *
 * - **Loopback only.** Every request the browser makes to a host other than 127.0.0.0/8,
 *   `localhost` or `[::1]` is aborted before it leaves (a page may reference one, e.g. ReDoc's
 *   logo); the aborted URLs are counted and reported, and a spec can read them from
 *   `offHostRequests`.
 * - **Browser diagnostics.** Console errors and warnings, uncaught page errors and failed
 *   requests are collected; when a test fails they are attached to the report and printed,
 *   so a page that never hydrates says why (a WASM load that failed, a panic, a CSP refusal).
 */
export const test = base.extend<{ offHostRequests: string[]; browserLog: string[] }>({
  offHostRequests: async ({}, use) => {
    await use([]);
  },
  browserLog: async ({}, use) => {
    await use([]);
  },
  context: async ({ context, offHostRequests }, use) => {
    await context.route(
      (url) => !isLoopback(url),
      async (route) => {
        offHostRequests.push(route.request().url());
        await route.abort('blockedbyclient');
      },
    );
    await use(context);
  },
  page: async ({ page, browserLog }, use, testInfo) => {
    const stamp = () => new Date().toISOString().slice(11, 23);
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') {
        browserLog.push(`${stamp()} console.${msg.type()} ${page.url()}: ${msg.text()}`);
      }
    });
    page.on('pageerror', (err) => browserLog.push(`${stamp()} pageerror ${page.url()}: ${err.stack ?? err.message}`));
    page.on('requestfailed', (req) => {
      const failure = req.failure()?.errorText ?? 'failed';
      // Off-host requests are aborted on purpose (above); the rest are worth a look.
      if (isLoopback(new URL(req.url()))) browserLog.push(`${stamp()} requestfailed ${req.method()} ${req.url()}: ${failure}`);
    });
    page.on('response', (res) => {
      if (res.status() >= 500) browserLog.push(`${stamp()} HTTP ${res.status()} ${res.request().method()} ${res.url()}`);
    });
    await use(page);
    if (testInfo.status !== testInfo.expectedStatus && browserLog.length > 0) {
      const text = browserLog.join('\n');
      await testInfo.attach('browser-log', { body: text, contentType: 'text/plain' });
      console.log(`browser log of "${testInfo.title}":\n${text}`);
    }
  },
});

export { expect };

/** True for a URL whose host is loopback: 127.0.0.0/8, `localhost` or `[::1]`; data:/blob: URLs count as local. */
export function isLoopback(url: URL): boolean {
  if (url.protocol === 'data:' || url.protocol === 'blob:' || url.protocol === 'about:') return true;
  const host = url.hostname;
  return host === 'localhost' || host === '[::1]' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
