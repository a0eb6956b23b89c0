import { readFileSync } from 'node:fs';
import { expect, test } from './fixtures';
import { aliceTokens, API, pathIs, signInDev, signInWithTokens, uniqueSuffix, waitHydrated } from './helpers';

// OpenStack VMs against the real test cloud (scripts/test starts ../shared/openstack-testcloud,
// points the server's SITE_CLOUDS_YAML and this OPENSTACK_TEST_CLOUDS_YAML at its clouds.yaml).
const cloudsFile = process.env.OPENSTACK_TEST_CLOUDS_YAML;
test.skip(!cloudsFile, 'OPENSTACK_TEST_CLOUDS_YAML is not set: no OpenStack test cloud');

/** The demo project's clouds (password + application credential) as a user's own file. */
function userCloudsYaml(): string {
  const full = readFileSync(cloudsFile as string, 'utf8');
  const keep = ['ostest', 'ostest-appcred'];
  let out = 'clouds:\n';
  let keeping = false;
  for (const line of full.split('\n')) {
    const m = /^ {2}([^ ][^:]*):\s*$/.exec(line);
    if (m) keeping = keep.includes(m[1]);
    if (keeping && line.trim()) out += `${line}\n`;
  }
  return out;
}

test.describe.configure({ mode: 'serial' });

test.describe('OpenStack VMs', () => {
  test('an admin imports the catalog from the site cloud', async ({ page }) => {
    await signInDev(page, 'admin');
    await page.getByTestId('nav-admin').click();
    await waitHydrated(page);
    await page.getByTestId('import-cloud').fill('ostest-admin');
    await page.getByTestId('import-submit').click();
    const report = page.getByTestId('import-report');
    await expect(report).toBeVisible({ timeout: 30_000 });
    await expect(report).toContainText('ostest-admin');
    await expect(report).toContainText('tiny');
    await expect(report).toContainText('m1.nano');
    // The tables are server HTML: the report links to a fresh copy of the page.
    await page.getByTestId('import-reload').click();
    await expect(page.locator('[data-testid="admin-image-row"][data-name="tiny"]')).toBeVisible();
    await expect(page.locator('[data-testid="admin-flavor-row"][data-name="m1.nano"]')).toBeVisible();
  });

  test('a user uploads a clouds.yaml, requests a VM, sees its IP, SSH command and console, deletes it', async ({ page, request }) => {
    const tokens = aliceTokens();
    await signInWithTokens(page, tokens);
    await page.getByTestId('nav-clouds').click();
    await expect(page).toHaveURL(pathIs('/clouds'));
    await waitHydrated(page);

    // A broken file is refused with the field and line named.
    await page.getByTestId('clouds-text').fill('clouds:\n  broken:\n    auth:\n      username: u\n      password: p\n');
    await page.getByTestId('clouds-upload').click();
    await expect(page.getByTestId('clouds-error')).toContainText('clouds.broken.auth (line 3)');

    // The real one, through the file picker.
    const yaml = userCloudsYaml();
    await page.getByTestId('clouds-file').setInputFiles({ name: 'clouds.yaml', mimeType: 'text/yaml', buffer: Buffer.from(yaml) });
    await expect(page.getByTestId('clouds-text')).toHaveValue(/ostest-appcred/);
    await page.getByTestId('clouds-default-input').fill('ostest');
    await page.getByTestId('clouds-upload').click();
    const rows = page.getByTestId('cloud-row');
    await expect(rows).toHaveCount(2);
    await expect(page.locator('[data-testid="cloud-row"][data-name="ostest"]')).toContainText('default');
    await expect(page.getByTestId('clouds-summary')).toContainText('v3applicationcredential');
    // The secrets never come back to the browser.
    expect(await page.content()).not.toContain('ci-secret');
    await expect(page.getByTestId('clouds-text')).toHaveValue('');

    // Test connection: Keystone accepts, Glance lists `tiny`.
    await page.locator('[data-testid="cloud-row"][data-name="ostest-appcred"]').getByTestId('cloud-test').click();
    await expect(page.getByTestId('cloud-test-result')).toContainText('tiny', { timeout: 30_000 });
    await expect(page.getByTestId('cloud-test-result')).toHaveClass(/ok/);
    if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/clouds-test-ok.png`, fullPage: true });

    // Request a VM from the imported image and flavor.
    const auth = { Authorization: `Bearer ${tokens.user}` };
    const images = (await (await request.get(`${API}/disk-images`, { headers: auth })).json()) as { id: string; friendly_name: string }[];
    const flavors = (await (await request.get(`${API}/flavors`, { headers: auth })).json()) as { id: string; friendly_name: string }[];
    const tiny = images.find((i) => i.friendly_name === 'tiny');
    const nano = flavors.find((f) => f.friendly_name === 'm1.nano');
    expect(tiny && nano, 'the imported catalog has tiny and m1.nano').toBeTruthy();

    const name = `e2e-vm-${uniqueSuffix()}`;
    await page.getByTestId('nav-new').click();
    await waitHydrated(page);
    await page.getByTestId('req-image').selectOption(tiny!.id);
    await page.getByTestId('req-flavor').selectOption(nano!.id);
    await page.getByTestId('req-name').fill(name);
    await page.getByTestId('req-network').fill('private');
    await page.getByTestId('req-ssh-keys').fill('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop');
    await page.getByTestId('req-userdata').fill('#cloud-config\npackages: [git]\n');
    await page.getByTestId('req-submit').click();
    await expect(page).toHaveURL(pathIs('/resources'));
    const row = page.locator(`[data-testid="resource-row"][data-name="${name}"]`);
    await expect(row).toBeVisible();
    await page.evaluate(() => ((window as unknown as Record<string, unknown>).__e2eNoReload = true));
    await expect(row.getByTestId('resource-state')).toContainText(/\bready\b/i, { timeout: 90_000 });
    expect(await page.evaluate(() => (window as unknown as Record<string, unknown>).__e2eNoReload)).toBe(true);

    await row.getByTestId('resource-link').click();
    await expect(page.getByTestId('resource-detail')).toBeVisible();
    await expect(page.getByTestId('detail-ip')).toHaveText(/^10\.99\.0\.\d+$/);
    await expect(page.getByTestId('detail-server-id')).toHaveText(/^[0-9a-f-]{36}$/);
    await expect(page.getByTestId('detail-pod-name')).toHaveCount(0);
    await expect(page.getByTestId('detail-ssh')).toHaveText(/^ssh \S*@10\.99\.0\.\d+$/);
    await waitHydrated(page);
    await page.getByTestId('console-show').click();
    await expect(page.getByTestId('console-output')).not.toBeEmpty({ timeout: 30_000 });
    if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/vm-console.png`, fullPage: true });

    await page.getByTestId('nav-resources').click();
    await waitHydrated(page);
    await row.getByTestId('resource-delete').click();
    await page.getByTestId('resource-delete-confirm').click();
    await expect(row).toHaveCount(0, { timeout: 90_000 });

    // Forget the clouds.yaml again.
    await page.getByTestId('nav-clouds').click();
    await waitHydrated(page);
    await page.getByTestId('clouds-delete').click();
    await page.getByTestId('clouds-delete-confirm').click();
    await expect(page.getByTestId('clouds-none')).toBeVisible();
  });
});
