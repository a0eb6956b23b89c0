import type { Browser, BrowserContext, Page } from '@playwright/test';
import { expect, test } from './fixtures';
import { ADMIN_USER_ID, createK8sCatalog, devToken, pathIs, uniqueSuffix, waitHydrated, type CatalogEntry } from './helpers';

// "Sign in with SLICES" against a real OpenID provider on loopback (npm oidc-provider, started
// by scripts/test with SLICES_ISSUER and OIDC_CLIENT_ID pointing at it). The provider's
// development screens take any account name; the account name is the SLICES user id.
const issuer = process.env.SLICES_ISSUER ?? '';
test.skip(!issuer || !process.env.OIDC_CLIENT_ID, 'no OpenID provider: run the specs through scripts/test e2e');

/** Signs in through the provider as `userId` and lands on `/resources` (or wherever `next` says). */
async function signInWithProvider(page: Page, userId: string): Promise<void> {
  await page.goto('/login');
  await page.getByTestId('login-oidc').click();
  await passProvider(page, userId);
  await expect(page).toHaveURL(pathIs('/resources'));
  await expect(page.getByTestId('nav-user')).toBeVisible();
}

/** The provider's own screens: account name (no password check), then consent, if asked. */
async function passProvider(page: Page, userId: string): Promise<void> {
  const login = page.locator('input[name="login"]');
  await expect(login.or(page.getByTestId('nav-user')).or(page.getByTestId('login-oidc-error')).first()).toBeVisible();
  if (await login.isVisible()) {
    await login.fill(userId);
    await page.locator('input[name="password"]').fill('any');
    await page.locator('button[type="submit"]').click();
  }
  // Consent (first sign-in of this account to the client).
  const consent = page.locator('button[type="submit"]', { hasText: /continue|authorize/i });
  await page.waitForURL((url) => url.origin !== new URL(issuer).origin || url.pathname.includes('/interaction/'));
  if (new URL(page.url()).origin === new URL(issuer).origin && (await consent.count()) > 0) {
    await consent.first().click();
  }
}

/** Signs in through the provider (so it remembers the account and its consent), then signs
 * out of the blueprint only. */
async function signInThenOut(page: Page, userId: string): Promise<void> {
  await signInWithProvider(page, userId);
  await waitHydrated(page);
  await page.getByTestId('nav-signout').click();
  await expect(page).toHaveURL(pathIs('/login'));
}

/**
 * Starts a sign-in and walks the provider's redirects without following the last one: the
 * provider's answer (our `/auth/callback?code=…&state=…`) comes back unvisited, to be tampered
 * with. `tamper` may change the authorization request first. The browser context's cookies
 * (the blueprint's session, the provider's) are used and kept. Needs a provider session that
 * skips its screens (see `signInThenOut`).
 */
async function providerAnswer(page: Page, tamper?: (auth: URL) => void): Promise<URL> {
  const start = await page.request.get('/auth/login', { maxRedirects: 0 });
  expect(start.status(), await start.text()).toBe(303);
  let url = new URL(start.headers()['location']);
  tamper?.(url);
  for (let hop = 0; hop < 10; hop++) {
    if (url.pathname === '/auth/callback') return url;
    const res = await page.request.get(url.toString(), { maxRedirects: 0 });
    const location = res.headers()['location'];
    expect(location, `${url} answered ${res.status()} without a redirect: ${await res.text()}`).toBeTruthy();
    url = new URL(location, url);
  }
  throw new Error('the provider did not answer within 10 redirects');
}

async function sessionCookie(context: BrowserContext): Promise<string | undefined> {
  return (await context.cookies()).find((c) => c.name === 'slices_session')?.value;
}

async function newPage(browser: Browser): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext();
  const page = await context.newPage();
  return { context, page };
}

let catalog: { flavor: CatalogEntry; image: CatalogEntry };

test.beforeAll(async ({ playwright }, testInfo) => {
  const request = await playwright.request.newContext({ baseURL: testInfo.project.use.baseURL });
  catalog = await createK8sCatalog(request, 'e2e-oidc');
  await request.dispose();
});

test.describe('sign in with SLICES (OpenID Connect)', () => {
  test('sign in, work past the experiment token, the admin sees it all in the audit log, sign out', async ({ page, context, browser }) => {
    test.skip(!!process.env.SKIP_K8S_TESTS, 'SKIP_K8S_TESTS is set: no Kubernetes API for the pod');
    const userId = `user_oidc.local_u${uniqueSuffix()}`;
    const experimentId = `exp_dev.local_oidc${uniqueSuffix()}`;

    // The session id the sign-in started with (set by /auth/login) is not the one it ends with.
    await page.goto('/login');
    const started = page.waitForResponse((r) => new URL(r.url()).pathname === '/auth/login');
    await page.getByTestId('login-oidc').click();
    const before = (await (await started).headerValue('set-cookie')) ?? '';
    expect(before).toContain('slices_session=');
    await passProvider(page, userId);
    await expect(page).toHaveURL(pathIs('/resources'));
    const after = await sessionCookie(context);
    expect(after).toBeTruthy();
    expect(before).not.toContain(`slices_session=${after}`);
    await expect(page.getByTestId('no-experiment')).toBeVisible();

    // Attach an experiment with a token that lives 2 s, then wait until it is dead (the
    // server allows 30 s of clock skew past `exp`).
    test.setTimeout(180_000);
    const token = devToken('experiment', { userId, experimentId, expiresInSecs: 2 });
    await page.goto('/account');
    await waitHydrated(page);
    await expect(page.getByTestId('account-method')).toHaveText('oidc');
    await page.getByTestId('attach-token').fill(token);
    await page.getByTestId('attach-submit').click();
    await expect(page).toHaveURL(pathIs('/resources'));
    await page.waitForTimeout(34_000);
    const expired = await page.request.get(`/apis/bi.slices.eu/v1alpha2/resources`, { headers: { Authorization: `Bearer ${token}` } });
    expect(expired.status(), 'the experiment token itself has expired').toBe(401);

    // The dashboard still acts for the experiment: request a pod, then delete it.
    const name = `oidc-pod-${uniqueSuffix()}`;
    await page.goto('/resources/new');
    await waitHydrated(page);
    await page.getByTestId('req-image').selectOption(catalog.image.id);
    await page.getByTestId('req-flavor').selectOption(catalog.flavor.id);
    await page.getByTestId('req-name').fill(name);
    await page.getByTestId('req-submit').click();
    await expect(page).toHaveURL(pathIs('/resources'));
    await waitHydrated(page);
    const row = page.locator(`[data-testid="resource-row"][data-name="${name}"]`);
    await expect(row).toBeVisible();
    await row.getByTestId('resource-delete').click();
    await page.getByTestId('resource-delete-confirm').click();
    await expect(row).toHaveCount(0, { timeout: 60_000 });

    // The admin finds the sign-in, the attach, the create and the delete in the audit log.
    const admin = await newPage(browser);
    await admin.context.route((url) => !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname), (r) => r.abort('blockedbyclient'));
    await signInWithProvider(admin.page, ADMIN_USER_ID);
    await admin.page.goto(`/admin/audit?user_id=${encodeURIComponent(userId)}`);
    const actions = admin.page.getByTestId('audit-row-action');
    await expect(actions.first()).toBeVisible();
    const seen = await actions.allTextContents();
    for (const action of ['session.sign_in', 'experiment.attach', 'resource.create', 'resource.delete']) {
      expect(seen, `audit actions of ${userId}`).toContain(action);
    }
    // The export carries the same entries as JSON lines.
    const exported = await admin.page.request.get(`/admin/audit.jsonl?user_id=${encodeURIComponent(userId)}`);
    expect(exported.status()).toBe(200);
    const lines = (await exported.text()).trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.action)).toEqual(seen);
    expect(lines.every((l) => l.user_id === userId)).toBe(true);
    await admin.context.close();

    // Sign out: the dashboard refuses afterwards.
    await page.goto('/resources');
    await waitHydrated(page);
    await page.getByTestId('nav-signout').click();
    await expect(page).toHaveURL(pathIs('/login'));
    await page.goto('/account');
    await expect(page).toHaveURL(pathIs('/login'));
  });

  test('a tampered state is refused', async ({ page }) => {
    await signInThenOut(page, `user_oidc.local_t${uniqueSuffix()}`);
    const answer = await providerAnswer(page);
    answer.searchParams.set('state', `${answer.searchParams.get('state')}x`);
    await page.goto(answer.toString());
    await expect(page).toHaveURL(/\/login\?error=/);
    await expect(page.getByTestId('login-oidc-error')).toContainText('state mismatch');
    await expect(page.getByTestId('nav-user')).toHaveCount(0);
  });

  test('a tampered nonce is refused', async ({ page }) => {
    await signInThenOut(page, `user_oidc.local_n${uniqueSuffix()}`);
    const answer = await providerAnswer(page, (auth) => auth.searchParams.set('nonce', 'not-the-nonce-the-blueprint-sent'));
    await page.goto(answer.toString());
    await expect(page).toHaveURL(/\/login\?error=/);
    await expect(page.getByTestId('login-oidc-error')).toContainText(/ID token is not valid.*nonce/i);
    await expect(page.getByTestId('nav-user')).toHaveCount(0);
  });

  test('a replayed authorization answer and a reused code are refused', async ({ page }) => {
    await signInThenOut(page, `user_oidc.local_r${uniqueSuffix()}`);
    const answer = await providerAnswer(page);
    await page.goto(answer.toString());
    await expect(page).toHaveURL(pathIs('/resources'));
    await expect(page.getByTestId('nav-user')).toBeVisible();
    // The same answer again: this browser's pending sign-in was used up.
    await page.goto(answer.toString());
    await expect(page).toHaveURL(/\/login\?error=/);
    await expect(page.getByTestId('login-oidc-error')).toContainText('no sign-in was started');
    // A new sign-in answered with the old code: the provider refuses to redeem it twice.
    const next = await providerAnswer(page);
    next.searchParams.set('code', answer.searchParams.get('code') ?? '');
    await page.goto(next.toString());
    await expect(page).toHaveURL(/\/login\?error=/);
    await expect(page.getByTestId('login-oidc-error')).toContainText('refused the authorization code');
  });

  test('sign out everywhere ends the sessions of every browser', async ({ page, browser }) => {
    const userId = `user_oidc.local_e${uniqueSuffix()}`;
    await signInWithProvider(page, userId);
    const other = await newPage(browser);
    await other.context.route((url) => !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname), (r) => r.abort('blockedbyclient'));
    await signInWithProvider(other.page, userId);

    await page.goto('/account');
    await waitHydrated(page);
    await page.getByTestId('sign-out-everywhere').click();
    await expect(page).toHaveURL(pathIs('/login'));
    await other.page.goto('/account');
    await expect(other.page).toHaveURL(pathIs('/login'));
    await other.context.close();
  });
});
