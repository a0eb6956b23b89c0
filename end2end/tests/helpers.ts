import { execFileSync } from 'node:child_process';
import { expect, type APIRequestContext, type Page } from '@playwright/test';

export const API = '/apis/bi.slices.eu/v1alpha2';
export const ADMIN_USER_ID = 'user_dev.local_admin';
export const ALICE_USER_ID = 'user_dev.local_alice';
export const QKD_PROJECT_ID = 'proj_dev.local_qkd';

/** A short suffix that keeps names unique across runs and tests (lowercase, digits). */
export function uniqueSuffix(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1000)}`;
}

export type DevTokenOptions = {
  userId?: string;
  name?: string;
  experimentId?: string;
  projectId?: string;
  expiresInSecs?: number;
};

/**
 * Mints a token with the server binary's dev issuer:
 *   slices-blueprint dev-token user --user-id ID [--name NAME]
 *   slices-blueprint dev-token experiment --experiment-id ID --project-id ID --user-id ID [--expires-in-secs N]
 * It runs with this process's environment, which scripts/test gives the same DEV_ISSUER,
 * DEV_ISSUER_KEY_FILE, PUBLIC_URL, ADMIN_USER_IDS and DATABASE_URL as the server.
 */
export function devToken(kind: 'user' | 'experiment', opts: DevTokenOptions = {}): string {
  const bin = process.env.SLICES_BIN;
  if (!bin) {
    throw new Error('SLICES_BIN is not set: run the specs through scripts/test e2e');
  }
  const args = ['dev-token', kind];
  if (kind === 'user') {
    args.push('--user-id', opts.userId ?? ALICE_USER_ID);
    if (opts.name) args.push('--name', opts.name);
  } else {
    args.push(
      '--experiment-id', opts.experimentId ?? `exp_dev.local_e2e${uniqueSuffix()}`,
      '--project-id', opts.projectId ?? QKD_PROJECT_ID,
      '--user-id', opts.userId ?? ALICE_USER_ID,
    );
    if (opts.expiresInSecs !== undefined) args.push('--expires-in-secs', String(opts.expiresInSecs));
  }
  // stderr is kept apart: the binary may log there; stdout is the token.
  const out = execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  const jwt = /^[\w-]+\.[\w-]+\.[\w-]*$/;
  if (jwt.test(out)) return out;
  // Tolerate a stray line before the token: take the last line that looks like a JWT.
  const line = out.split('\n').map((l) => l.trim()).reverse().find((l) => jwt.test(l));
  if (!line) throw new Error(`dev-token ${kind} printed no JWT: ${out}`);
  return line;
}

/** Alice's pair of tokens (user token + experiment token in project qkd). */
export function aliceTokens(): { user: string; experiment: string } {
  return {
    user: devToken('user', { userId: ALICE_USER_ID, name: 'Alice' }),
    experiment: devToken('experiment', { userId: ALICE_USER_ID, projectId: QKD_PROJECT_ID }),
  };
}

/**
 * Waits until the WASM bundle has hydrated the page (the app sets body[data-hydrated="true"]).
 * Before that, SSR-rendered buttons are inert and a click would be lost.
 */
export async function waitHydrated(page: Page): Promise<void> {
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true', { timeout: 30_000 });
}

/** A regular expression for a path with any query string, e.g. pathIs('/resources'). */
export function pathIs(path: string): RegExp {
  const escaped = path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return new RegExp(`^[a-z]+://[^/]+${escaped}(\\?.*)?$`);
}

/** Signs in on /login by pasting a user token and an experiment token. */
export async function signInWithTokens(page: Page, tokens: { user: string; experiment: string }): Promise<void> {
  await page.goto('/login');
  await waitHydrated(page);
  await page.getByTestId('login-user-token').fill(tokens.user);
  await page.getByTestId('login-experiment-token').fill(tokens.experiment);
  await page.getByTestId('login-submit').click();
  await expect(page).toHaveURL(pathIs('/resources'));
  await expect(page.getByTestId('nav-user')).toBeVisible();
}

/** Signs in by pasting tokens into the plain POST form, for pages without JavaScript. */
export async function signInWithTokensNoJs(page: Page, tokens: { user: string; experiment: string }): Promise<void> {
  await page.goto('/login');
  await page.getByTestId('login-user-token').fill(tokens.user);
  await page.getByTestId('login-experiment-token').fill(tokens.experiment);
  await page.getByTestId('login-submit').click();
  await expect(page).toHaveURL(pathIs('/resources'));
  await expect(page.getByTestId('nav-user')).toBeVisible();
}

/** Signs in with one of the dev issuer's buttons on /login (only there when DEV_ISSUER=true). */
export async function signInDev(page: Page, who: 'admin' | 'user'): Promise<void> {
  await page.goto('/login');
  await waitHydrated(page);
  await page.getByTestId(`dev-signin-${who}`).click();
  await expect(page).toHaveURL(pathIs('/resources'));
  await expect(page.getByTestId('nav-user')).toBeVisible();
}

export type CatalogEntry = { id: string; friendly_name: string };

/** Creates a k8s flavor and a k8s disk image through the REST API as the admin. */
export async function createK8sCatalog(
  request: APIRequestContext,
  prefix = 'e2e',
): Promise<{ flavor: CatalogEntry; image: CatalogEntry }> {
  const headers = { Authorization: `Bearer ${devToken('user', { userId: ADMIN_USER_ID, name: 'Admin' })}` };
  const suffix = uniqueSuffix();

  const flavorRes = await request.post(`${API}/flavors`, {
    headers,
    data: {
      friendly_name: `${prefix}-flavor-${suffix}`,
      description: 'created by the end-to-end tests',
      flavor_type: 'k8s',
      ram_mib: 64,
      vcpus: 1,
      disk_mb: 0,
    },
  });
  expect(flavorRes.status(), `POST ${API}/flavors: ${await flavorRes.text()}`).toBe(201);
  const flavor = (await flavorRes.json()) as CatalogEntry;

  const imageRes = await request.post(`${API}/disk-images`, {
    headers,
    data: {
      friendly_name: `${prefix}-image-${suffix}`,
      cluster_id: 'default',
      location: 'nginx:alpine',
      default_username: 'root',
      min_disk_mb: 0,
      min_ram_mib: 0,
      short_description: '',
      long_description: '',
      tags: [],
      hidden: false,
    },
  });
  expect(imageRes.status(), `POST ${API}/disk-images: ${await imageRes.text()}`).toBe(201);
  const image = (await imageRes.json()) as CatalogEntry;

  expect(flavor.id).toBeTruthy();
  expect(image.id).toBeTruthy();
  return { flavor, image };
}
