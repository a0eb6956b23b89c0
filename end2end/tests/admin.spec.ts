import { expect, test } from './fixtures';
import { aliceTokens, createK8sCatalog, pathIs, signInDev, signInWithTokens, uniqueSuffix, waitHydrated } from './helpers';

test.describe('admin', () => {
  test('an admin creates a k8s flavor that then shows in the admin table and the catalog', async ({ page }) => {
    const name = `e2e-flavor-${uniqueSuffix()}`;
    await signInDev(page, 'admin');

    await expect(page.getByTestId('nav-admin')).toBeVisible();
    await page.getByTestId('nav-admin').click();
    await expect(page).toHaveURL(pathIs('/admin'));
    await waitHydrated(page);
    await expect(page.getByTestId('admin-panel')).toBeVisible();

    await page.getByTestId('flavor-name').fill(name);
    await page.getByTestId('flavor-description').fill('created through the admin form');
    await page.getByTestId('flavor-type').selectOption('k8s');
    await page.getByTestId('flavor-vcpus').fill('1');
    await page.getByTestId('flavor-ram').fill('64');
    await page.getByTestId('flavor-disk').fill('0');
    await page.getByTestId('flavor-submit').click();

    await expect(
      page.getByTestId('admin-flavors').locator(`[data-testid="admin-flavor-row"][data-name="${name}"]`),
    ).toBeVisible();

    await page.getByTestId('nav-catalog').click();
    await expect(page).toHaveURL(pathIs('/catalog'));
    await expect(
      page.getByTestId('flavors-table').locator(`[data-testid="flavor-row"][data-name="${name}"]`),
    ).toBeVisible();
  });

  test('an admin edits, hides and deletes catalog entries from the tables', async ({ page, request }) => {
    const { flavor, image } = await createK8sCatalog(request, 'e2e-admin');
    await signInDev(page, 'admin');
    await page.goto('/admin');
    await waitHydrated(page);
    const flavorRow = page.locator(`[data-testid="admin-flavor-row"][data-name="${flavor.friendly_name}"]`);
    const imageRow = page.locator(`[data-testid="admin-image-row"][data-name="${image.friendly_name}"]`);

    // Edit: the link opens the form on that entry; saving reloads the tables.
    await flavorRow.getByRole('link', { name: 'Edit' }).click();
    await expect(page).toHaveURL(/edit_flavor=/);
    await waitHydrated(page);
    await expect(page.getByTestId('flavor-name')).toHaveValue(flavor.friendly_name);
    await page.getByTestId('flavor-ram').fill('128');
    await page.getByTestId('flavor-submit').click();
    await expect(page).toHaveURL(pathIs('/admin'));
    await expect(flavorRow).toContainText('128 MiB');

    // Hide, then show again (plain forms that post and come back).
    await imageRow.getByRole('button', { name: 'Hide' }).click();
    await expect(imageRow).toContainText('hidden');
    await imageRow.getByRole('button', { name: 'Show' }).click();
    await expect(imageRow).toContainText('listed');

    await imageRow.getByRole('button', { name: 'Delete' }).click();
    await expect(imageRow).toHaveCount(0);
    await flavorRow.getByRole('button', { name: 'Delete' }).click();
    await expect(flavorRow).toHaveCount(0);
  });

  test('a save the server rejects comes back with the message next to its field', async ({ page, request }) => {
    await signInDev(page, 'admin');
    await page.goto('/admin');
    await waitHydrated(page);
    // Spaces pass the browser's `required` check; the server trims and refuses the name.
    await page.getByTestId('flavor-name').fill('   ');
    await page.getByTestId('flavor-submit').click();
    await expect(page).toHaveURL(/\/admin\?.*__err=/);
    await expect(page.getByTestId('err-friendly_name')).toContainText('must not be empty');

    // Editing: the error redirect keeps `?edit_flavor=`, so the form stays on that entry.
    const { flavor } = await createK8sCatalog(request, 'e2e-admin-err');
    await page.goto('/admin');
    await page
      .locator(`[data-testid="admin-flavor-row"][data-name="${flavor.friendly_name}"]`)
      .getByRole('link', { name: 'Edit' })
      .click();
    await page.getByTestId('flavor-name').fill('  ');
    await page.getByTestId('flavor-submit').click();
    await expect(page).toHaveURL(/edit_flavor=.*__err=/);
    await expect(page.getByTestId('err-friendly_name')).toContainText('must not be empty');
    await expect(page.getByTestId('flavor-name')).toHaveValue(flavor.friendly_name);
  });

  test('a non-admin (dev sign-in) has no admin link and is refused on /admin', async ({ page }) => {
    await signInDev(page, 'user');
    await expect(page.getByTestId('nav-admin')).toHaveCount(0);
    await page.goto('/admin');
    await expect(page.getByTestId('admin-forbidden')).toBeVisible();
    await expect(page.getByTestId('admin-panel')).toHaveCount(0);
  });

  test('a non-admin (pasted tokens) has no admin link and is refused on /admin', async ({ page }) => {
    await signInWithTokens(page, aliceTokens());
    await expect(page.getByTestId('nav-admin')).toHaveCount(0);
    await page.goto('/admin');
    await expect(page.getByTestId('admin-forbidden')).toBeVisible();
    await expect(page.getByTestId('admin-panel')).toHaveCount(0);
  });
});
