import { expect, test } from './fixtures';
import { aliceTokens, devToken, pathIs, signInWithTokens, waitHydrated } from './helpers';

test.describe('sign-in', () => {
  test('pasting a user token and an experiment token signs in; sign-out returns to /login', async ({ page }) => {
    await signInWithTokens(page, aliceTokens());
    await expect(page.getByTestId('nav-user')).toContainText(/alice/i);
    // Attached, not visible: a table without any rows may have no size at all.
    await expect(page.getByTestId('resources-table')).toBeAttached();

    await page.getByTestId('nav-signout').click();
    await expect(page).toHaveURL(pathIs('/login'));
    await expect(page.getByTestId('nav-user')).toHaveCount(0);

    // The session is really gone: a protected page sends us back to /login.
    await page.goto('/resources');
    await expect(page).toHaveURL(pathIs('/login'));
  });

  test('a garbage token shows an error and does not sign in', async ({ page }) => {
    await page.goto('/login');
    await waitHydrated(page);
    await page.getByTestId('login-user-token').fill('this-is-not-a-token');
    await page.getByTestId('login-experiment-token').fill(devToken('experiment'));
    await page.getByTestId('login-submit').click();
    await expect(page.getByTestId('login-error')).toBeVisible();
    await expect(page.getByTestId('login-error')).not.toHaveText('');
    await expect(page).toHaveURL(pathIs('/login'));
    await expect(page.getByTestId('nav-user')).toHaveCount(0);
  });

  test('visiting /resources while signed out redirects to /login', async ({ page }) => {
    await page.goto('/resources');
    await expect(page).toHaveURL(pathIs('/login'));
    await expect(page.getByTestId('login-submit')).toBeVisible();
  });
});
