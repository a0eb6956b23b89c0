import { defineConfig } from '@playwright/test';

// scripts/test starts the release server (fresh database, dev issuer on, Kubernetes test server)
// and runs these specs against it with BASE_URL and SLICES_BIN set.
export default defineConfig({
  testDir: 'tests',
  // One worker: the specs share one server and one Kubernetes API on a 2-core machine.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 90_000,
  expect: { timeout: 10_000 },
  forbidOnly: !!process.env.CI,
  reporter: 'list',
  use: {
    baseURL: process.env.BASE_URL ?? 'http://127.0.0.1:3900',
    browserName: 'chromium',
    launchOptions: {
      // Debian's Chromium: Playwright's own browser downloads are not reachable from here.
      executablePath: '/usr/bin/chromium',
      // Without the background-networking flags Chromium keeps trying to reach Google services.
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
    screenshot: 'only-on-failure',
    trace: 'off',
  },
  projects: [{ name: 'chromium', use: { browserName: 'chromium' } }],
});
