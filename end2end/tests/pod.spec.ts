import { expect, test } from './fixtures';
import { API, aliceTokens, createK8sCatalog, pathIs, signInWithTokens, uniqueSuffix, waitHydrated, type CatalogEntry } from './helpers';

// The worker creates real Pods: needs the Kubernetes API (scripts/test starts the test server).
test.skip(!!process.env.SKIP_K8S_TESTS, 'SKIP_K8S_TESTS is set: no Kubernetes API for the tests');

let catalog: { flavor: CatalogEntry; image: CatalogEntry };

test.beforeAll(async ({ playwright }, testInfo) => {
  const request = await playwright.request.newContext({ baseURL: testInfo.project.use.baseURL });
  catalog = await createK8sCatalog(request, 'e2e-pod');
  await request.dispose();
});

test.describe('pod resources', () => {
  test('request a pod, watch it become ready without reloading, inspect it, delete it', async ({ page }) => {
    const name = `e2e-pod-${uniqueSuffix()}`;
    await signInWithTokens(page, aliceTokens());

    await page.getByTestId('nav-new').click();
    await expect(page).toHaveURL(pathIs('/resources/new'));
    await waitHydrated(page);
    // selectOption waits until the option is present in the <select>.
    await page.getByTestId('req-image').selectOption(catalog.image.id);
    await page.getByTestId('req-flavor').selectOption(catalog.flavor.id);
    await page.getByTestId('req-name').fill(name);
    await expect(page.getByTestId('req-expires')).not.toHaveValue(''); // prefilled
    await page.getByTestId('req-submit').click();

    await expect(page).toHaveURL(pathIs('/resources'));
    const row = page.locator(`[data-testid="resource-row"][data-name="${name}"]`);
    await expect(row).toBeVisible();

    // A marker in the window object survives client-side updates but not a page reload: it
    // proves the list refreshed itself.
    await page.evaluate(() => ((window as unknown as Record<string, unknown>).__e2eNoReload = true));
    await expect(row.getByTestId('resource-state')).toContainText(/\bready\b/i, { timeout: 60_000 });
    expect(await page.evaluate(() => (window as unknown as Record<string, unknown>).__e2eNoReload)).toBe(true);

    await row.getByTestId('resource-link').click();
    await expect(page).toHaveURL(/\/resources\/[^/?#]+(\?.*)?$/);
    await expect(page.getByTestId('resource-detail')).toBeVisible();
    await expect(page.getByTestId('detail-pod-name')).toHaveText(name);
    await expect(page.getByTestId('detail-namespace')).not.toHaveText('');
    await expect(page.getByTestId('console-panel')).toHaveCount(0);
    await expect(page.getByTestId('detail-ip')).toHaveText(/\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+/i);
    await expect(page.getByTestId('task-history')).toBeVisible();
    await expect(page.getByTestId('task-row').first()).toBeVisible();

    await page.getByTestId('nav-resources').click();
    await expect(page).toHaveURL(pathIs('/resources'));
    await waitHydrated(page);
    await expect(row).toBeVisible();
    await row.getByTestId('resource-delete').click();
    // The confirmation is inline; only one is open at a time.
    await page.getByTestId('resource-delete-confirm').click();
    await expect(row).toHaveCount(0, { timeout: 60_000 });
  });

  test('time left, a banner within 24 h, and "Extend by" on the resource page', async ({ page, request }) => {
    const tokens = aliceTokens();
    const name = `e2e-ext-${uniqueSuffix()}`;
    // Through the API: a pod that expires in 2 hours.
    const expires = new Date(Date.now() + 2 * 3600_000);
    expires.setUTCSeconds(0, 0);
    const created = await request.post(`${API}/resources`, {
      headers: { Authorization: `Bearer ${tokens.experiment}` },
      data: {
        expires_at: expires.toISOString(),
        resources: [{ friendly_name: name, disk_image_id: catalog.image.id, flavor_id: catalog.flavor.id }],
        tokens: [{ jwt: tokens.user }],
      },
    });
    expect(created.status(), await created.text()).toBe(202);
    const id = ((await created.json()) as { resources: { id: string }[] }).resources[0].id;

    await signInWithTokens(page, tokens);
    await page.goto('/resources');
    await waitHydrated(page);
    const row = page.locator(`[data-testid="resource-row"][data-name="${name}"]`);
    await expect(row.getByTestId('resource-time-left')).toHaveText(/^in 1 h \d+ min$/);
    await expect(page.getByTestId('expiry-banner')).toContainText(name);
    if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/resources-expiry.png`, fullPage: true });

    await row.getByTestId('resource-link').click();
    await expect(page).toHaveURL(pathIs(`/resources/${id}`));
    await waitHydrated(page);
    await expect(page.getByTestId('detail-time-left')).toHaveText(/^in 1 h \d+ min$/);
    await page.getByTestId('extend-1d').check();
    await page.getByTestId('extend-submit').click();
    await expect(page.getByTestId('extend-done')).toBeVisible();
    // A day later than before, shown without a reload.
    await expect(page.getByTestId('detail-time-left')).toHaveText(/^in 1 day 1 h$/);
    const after = await request.get(`${API}/resources/${id}`, { headers: { Authorization: `Bearer ${tokens.experiment}` } });
    const expiresAt = new Date(((await after.json()) as { expires_at: string }).expires_at);
    expect(expiresAt.getTime()).toBe(expires.getTime() + 24 * 3600_000);

    // A date earlier than the current expiry is refused next to the form.
    await page.getByTestId('extend-custom').check();
    await page.getByTestId('extend-until').fill(new Date(Date.now() + 3600_000).toISOString().slice(0, 16));
    await page.getByTestId('extend-submit').click();
    await expect(page.getByTestId('err-expires_at')).toContainText('earlier than');
    if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/resource-extend.png`, fullPage: true });

    await request.delete(`${API}/resources/${id}`, { headers: { Authorization: `Bearer ${tokens.experiment}` } });
  });

  test('an invalid name is refused with a field error', async ({ page }) => {
    await signInWithTokens(page, aliceTokens());
    await page.goto('/resources/new');
    await waitHydrated(page);
    await page.getByTestId('req-image').selectOption(catalog.image.id);
    await page.getByTestId('req-flavor').selectOption(catalog.flavor.id);
    await page.getByTestId('req-name').fill('Bad_Name!');
    await page.getByTestId('req-submit').click();
    await expect(page.getByTestId('err-friendly_name')).toBeVisible();
    await expect(page).toHaveURL(pathIs('/resources/new'));
  });
});
