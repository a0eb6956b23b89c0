import { expect, isLoopback, test } from './fixtures';

// The browser tests' own rule (fixtures.ts): only loopback is reached. Checked on the filter
// itself, never by sending a request elsewhere.
test.describe('loopback-only filter', () => {
  test('loopback hosts pass, every other host is refused', () => {
    for (const ok of ['http://127.0.0.1:3900/', 'http://127.5.6.7/x', 'http://localhost:8080/', 'http://[::1]:3900/', 'data:text/plain,hi']) {
      expect(isLoopback(new URL(ok)), ok).toBe(true);
    }
    for (const no of [
      'https://cdn.redoc.ly/redoc/logo-mini.svg',
      'http://10.0.0.1/',
      'http://192.168.1.1/',
      'http://169.254.169.254/latest/meta-data',
      'http://[fe80::1]/',
      'http://127.0.0.1.example.com/',
      'http://localhost.example.com/',
      'http://128.0.0.1/',
    ]) {
      expect(isLoopback(new URL(no)), no).toBe(false);
    }
  });

  test('ReDoc and Swagger UI render from local assets with every off-host request aborted', async ({ page, browserLog }) => {
    await page.goto('/redoc');
    // ReDoc (served from /vendor) fetched the OpenAPI document and drew the operations.
    await expect(page.locator('h1', { hasText: 'slices-blueprint' })).toBeVisible({ timeout: 20_000 });
    await expect(page.getByText('list_resources').first()).toBeAttached();
    await page.goto('/docs/');
    await expect(page.locator('.swagger-ui .opblock').first()).toBeVisible({ timeout: 20_000 });
    // No local request failed (off-host ones are aborted on purpose and not logged).
    expect(browserLog.filter((l) => l.includes('requestfailed'))).toEqual([]);
  });
});
