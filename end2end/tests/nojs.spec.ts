import { expect, test } from '@playwright/test';
import { aliceTokens, createK8sCatalog, pathIs } from './helpers';

// Server-side rendering without any JavaScript: the login form is a plain POST form, and the
// catalog and resource tables come from SSR.
test.use({ javaScriptEnabled: false });

test.describe('without JavaScript', () => {
  test('the login form works and /catalog and /resources render their tables', async ({ page, request }) => {
    const { flavor, image } = await createK8sCatalog(request, 'e2e-nojs');

    await page.goto('/login');
    const tokens = aliceTokens();
    await page.getByTestId('login-user-token').fill(tokens.user);
    await page.getByTestId('login-experiment-token').fill(tokens.experiment);
    await page.getByTestId('login-submit').click();

    await expect(page).toHaveURL(pathIs('/resources'));
    await expect(page.getByTestId('nav-user')).toBeVisible();
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
});
