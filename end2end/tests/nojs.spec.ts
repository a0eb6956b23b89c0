import { expect, test } from './fixtures';
import { aliceTokens, createK8sCatalog, signInWithTokensNoJs } from './helpers';

// Server-side rendering without any JavaScript: the login form is a plain POST form, and the
// catalog and resource tables come from SSR.
test.use({ javaScriptEnabled: false });

test.describe('without JavaScript', () => {
  test('the login form works and /catalog and /resources render their tables', async ({ page, request }) => {
    const { flavor, image } = await createK8sCatalog(request, 'e2e-nojs');

    await signInWithTokensNoJs(page, aliceTokens());
    // Attached, not visible: a table without any rows may have no size at all.
    await expect(page.getByTestId('resources-table')).toBeAttached();
    // Nothing hydrated this page: it is all server-rendered HTML.
    await expect(page.locator('body')).not.toHaveAttribute('data-hydrated', 'true');

    await page.goto('/catalog');
    await expect(page.getByTestId('images-table')).toBeVisible();
    await expect(page.getByTestId('flavors-table')).toBeVisible();
    await expect(
      page.getByTestId('images-table').locator(`[data-testid="image-row"][data-name="${image.friendly_name}"]`),
    ).toBeVisible();
    await expect(
      page.getByTestId('flavors-table').locator(`[data-testid="flavor-row"][data-name="${flavor.friendly_name}"]`),
    ).toBeVisible();
  });

  test('a clouds.yaml pasted without JavaScript is stored and only its summary comes back', async ({ page }) => {
    await signInWithTokensNoJs(page, aliceTokens());

    await page.goto('/clouds');
    const secret = `nojs-secret-${Date.now()}`;
    await page.getByTestId('clouds-text').fill(
      `clouds:\n  lab:\n    auth:\n      auth_url: https://keystone.lab.example:5000/v3\n      username: alice\n      password: ${secret}\n      project_name: qkd\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n` +
        `  spare:\n    auth:\n      auth_url: https://keystone.spare.example:5000/v3\n      username: alice\n      password: ${secret}\n      project_name: qkd\n      user_domain_name: Default\n      project_domain_name: Default\n`,
    );
    await page.getByTestId('clouds-upload').click();
    await page.goto('/clouds');
    const row = page.locator('[data-testid="cloud-row"][data-name="lab"]');
    await expect(row).toBeVisible();
    await expect(row).toContainText('https://keystone.lab.example:5000/v3');
    await expect(row).toContainText('qkd');
    expect(await page.content()).not.toContain(secret);

    // "Make default" and "Delete" are plain forms too (the delete asks through <details>).
    const spare = page.locator('[data-testid="cloud-row"][data-name="spare"]');
    await expect(spare.getByTestId('cloud-default')).toHaveCount(0);
    await spare.getByTestId('cloud-make-default').click();
    await expect(spare.getByTestId('cloud-default')).toBeVisible();
    await expect(row.getByTestId('cloud-default')).toHaveCount(0);
    await expect(page.getByTestId('clouds-delete-confirm')).toBeHidden();
    await page.getByTestId('clouds-delete').click();
    await page.getByTestId('clouds-delete-confirm').click();
    await expect(page.getByTestId('clouds-none')).toBeVisible();
  });

  test('Test connection posts, and a Keystone on a loopback port outside the allow-list is refused with why, under that cloud', async ({ page }) => {
    await signInWithTokensNoJs(page, aliceTokens());
    await page.goto('/clouds');
    // Port 9 (discard) on loopback: not in OPENSTACK_ALLOWED_ENDPOINTS (scripts/test allows
    // only the test cloud's endpoints), so the server refuses it without connecting.
    await page.getByTestId('clouds-text').fill(
      'clouds:\n  deadlab:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n      username: alice\n      password: not-used\n      project_name: qkd\n      user_domain_name: Default\n      project_domain_name: Default\n',
    );
    await page.getByTestId('clouds-upload').click();
    await page.goto('/clouds');
    // "Test connection" is a POST (no network call on GET); the page it returns to shows the answer.
    const posts: string[] = [];
    page.on('request', (r) => { if (r.method() === 'POST') posts.push(new URL(r.url()).pathname); });
    await page.locator('[data-testid="cloud-row"][data-name="deadlab"]').getByTestId('cloud-test').click();
    const result = page.locator(
      '[data-testid="cloud-row"][data-name="deadlab"] + tr.test-result [data-testid="cloud-test-result"]',
    );
    await expect(result).toBeVisible({ timeout: 30_000 });
    await expect(result).toHaveClass(/error/);
    await expect(result).toContainText('127.0.0.1:9');
    // The rule's own words (which range, which setting), not the HTTP client's wrapper.
    await expect(result).toContainText('not an allowed OpenStack endpoint');
    await expect(result).toContainText('loopback');
    await expect(result).toContainText('OPENSTACK_ALLOWED_ENDPOINTS');
    await expect(result).not.toContainText('error sending request');
    expect(posts).toContain('/api/test-cloud');
    expect(page.url()).not.toContain('test=');
    // The answer spans the table, not the narrow actions cell.
    const table = await page.locator('table:has([data-testid="cloud-row"])').boundingBox();
    const box = await result.boundingBox();
    expect(box && table && box.width > table.width * 0.8).toBeTruthy();
    if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/clouds-test.png`, fullPage: true });
  });
});

