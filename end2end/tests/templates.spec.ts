import { expect, test } from './fixtures';
import {
  aliceTokens,
  createK8sCatalog,
  pathIs,
  signInWithTokens,
  signInWithTokensNoJs,
  uniqueSuffix,
  waitHydrated,
  type CatalogEntry,
} from './helpers';
import { readFileSync } from 'node:fs';

// The QKD link starts real Pods: needs the Kubernetes API (scripts/test starts the test server).
test.skip(!!process.env.SKIP_K8S_TESTS, 'SKIP_K8S_TESTS is set: no Kubernetes API for the tests');

let catalog: { flavor: CatalogEntry; image: CatalogEntry };

test.beforeAll(async ({ playwright }, testInfo) => {
  const request = await playwright.request.newContext({ baseURL: testInfo.project.use.baseURL });
  catalog = await createK8sCatalog(request, 'e2e-qkd');
  await request.dispose();
});

const shot = async (page: import('@playwright/test').Page, name: string) => {
  if (process.env.E2E_SHOTS) await page.screenshot({ path: `${process.env.E2E_SHOTS}/${name}.png`, fullPage: true });
};

test.describe('templates, the experiment picture and pod logs', () => {
  test('launch the QKD link from the gallery, see it turn green, follow a log, export the spec', async ({ page }) => {
    const prefix = `q${uniqueSuffix()}`.slice(0, 16);
    await signInWithTokens(page, aliceTokens());

    await page.getByTestId('nav-templates').click();
    await expect(page).toHaveURL(pathIs('/templates'));
    const card = page.locator('[data-testid="template-card"][data-name="QKD link"]');
    await expect(card).toBeVisible();
    await shot(page, 'template-gallery');
    await card.getByTestId('template-open').click();
    await expect(page.getByTestId('template-name')).toHaveText('QKD link');

    // The form is generated from the parameters: selects for catalog entries, numbers with bounds.
    await page.getByTestId('param-name_prefix').fill(prefix);
    await page.getByTestId('param-kme_image').selectOption(catalog.image.id);
    await page.getByTestId('param-kme_flavor').selectOption(catalog.flavor.id);
    await expect(page.getByTestId('param-key_delivery_port')).toHaveValue('8443');
    await page.getByTestId('template-preview').click();
    await expect(page.getByTestId('plan-row')).toHaveCount(2);
    await expect(page.getByTestId('template-plan')).toContainText(`${prefix}-kme-a`);
    await expect(page.getByTestId('template-plan')).toContainText(`PEER_KME_ADDRESS=${prefix}-kme-b:9000`);
    await shot(page, 'template-preview');
    await waitHydrated(page);
    const launched = Date.now();
    await page.getByTestId('template-launch').click();

    // The experiment's picture: both KMEs, linked by their Services, turning green live.
    await expect(page).toHaveURL(pathIs('/experiment'));
    await waitHydrated(page);
    const picture = page.getByTestId('experiment-picture');
    for (const kme of ['kme-a', 'kme-b']) {
      await expect(picture.locator(`a.node[data-name="${prefix}-${kme}"]`)).toHaveAttribute('data-state', 'state-ok', {
        timeout: 60_000,
      });
    }
    console.log(`QKD link: Launch to both KMEs green in the picture: ${Date.now() - launched} ms`);
    await expect(picture.locator(`g.edge[data-from="${prefix}-kme-a"][data-to="${prefix}-kme-b"]`)).toHaveCount(1);
    await shot(page, 'experiment-picture');
    // Page weight of the experiment page as the browser fetched it (document + every
    // resource, bytes over the wire and decoded).
    const weight = await page.evaluate(() => {
      const entries = [
        ...performance.getEntriesByType('navigation'),
        ...performance.getEntriesByType('resource'),
      ] as PerformanceResourceTiming[];
      return {
        requests: entries.length,
        transfer: entries.reduce((n, e) => n + e.transferSize, 0),
        decoded: entries.reduce((n, e) => n + e.decodedBodySize, 0),
      };
    });
    console.log(`experiment page weight: ${weight.requests} requests, ${weight.transfer} bytes transferred, ${weight.decoded} bytes decoded`);
    expect(weight.transfer).toBeGreaterThan(0);
    // The bundle travels compressed.
    const wasm = await page.request.get('/pkg/slices-blueprint.wasm', { headers: { 'Accept-Encoding': 'gzip' } });
    expect(wasm.headers()['content-encoding']).toBe('gzip');

    // A node opens its detail: options, Service, and the log (tail, then followed).
    await picture.locator(`a.node[data-name="${prefix}-kme-a"]`).click();
    await expect(page.getByTestId('detail-service')).toHaveText(`${prefix}-kme-a`);
    await expect(page.getByTestId('detail-env')).toContainText(`PEER_KME_ID=${prefix}-kme-b`);
    await expect(page.getByTestId('detail-ports')).toContainText('etsi014 8443/TCP');
    await page.getByTestId('pod-log-show').click();
    await expect(page.getByTestId('pod-log-output')).toContainText('starting container main');
    await waitHydrated(page);
    await page.getByTestId('pod-log-follow').click();
    await expect(page.getByTestId('pod-log-follow-state')).toHaveText('following…');
    await expect(page.getByTestId('pod-log-stream')).toContainText(/heartbeat \d+/, { timeout: 15_000 });
    await shot(page, 'pod-log-follow');
    await page.getByTestId('pod-log-follow').click();
    await expect(page.getByTestId('pod-log-follow-state')).toHaveText('stopped');
    const logDownload = page.waitForEvent('download');
    await page.getByTestId('pod-log-download').click();
    const logFile = await (await logDownload).path();
    expect(readFileSync(logFile, 'utf8')).toContain('starting container main');

    // The experiment as a spec file: both KMEs, by name, with their Pod options.
    await page.goto('/experiment');
    const specDownload = page.waitForEvent('download');
    await page.getByTestId('export-spec').click();
    const spec = JSON.parse(readFileSync(await (await specDownload).path(), 'utf8')) as {
      resources: { friendly_name: string; flavor: string; disk_image: string; ports?: unknown[] }[];
    };
    const kmeA = spec.resources.find((r) => r.friendly_name === `${prefix}-kme-a`);
    expect(kmeA?.flavor).toBe(catalog.flavor.friendly_name);
    expect(kmeA?.disk_image).toBe(catalog.image.friendly_name);
    expect(kmeA?.ports?.length).toBe(2);

    // ... and as a template of this experiment, which the gallery then lists.
    await waitHydrated(page);
    await page.getByTestId('save-template-name').fill(`saved ${prefix}`);
    await page.getByTestId('save-template').click();
    await expect(page.getByTestId('save-template-done')).toBeVisible();
    await page.goto('/templates');
    await expect(page.locator(`[data-testid="template-card"][data-name="saved ${prefix}"]`)).toBeVisible();
  });

  test('a spec file with a bad entry is checked entry by entry and nothing is requested', async ({ page }) => {
    await signInWithTokens(page, aliceTokens());
    await page.goto('/resources');
    await page.getByTestId('import-link').click();
    await expect(page).toHaveURL(pathIs('/resources/import'));
    await waitHydrated(page);
    const good = `imp-${uniqueSuffix()}`;
    const spec = {
      resources: [
        { friendly_name: good, flavor: catalog.flavor.friendly_name, disk_image: catalog.image.friendly_name },
        { friendly_name: `${good}-b`, flavor: 'no-such-flavor', disk_image: catalog.image.friendly_name },
      ],
    };
    await page.getByTestId('spec-text').fill(JSON.stringify(spec, null, 2));
    await page.getByTestId('spec-check').click();
    await expect(page.getByTestId('spec-row')).toHaveCount(2);
    await expect(page.getByTestId('spec-summary')).toHaveText('1 of 2 entries need fixing.');
    await expect(page.getByTestId('spec-error').nth(1)).toContainText('no flavor `no-such-flavor`');
    await page.getByTestId('spec-import').click();
    await expect(page.getByTestId('err-spec').or(page.locator('.error'))).toContainText('no-such-flavor');
    await page.goto('/resources');
    await expect(page.locator(`[data-testid="resource-row"][data-name="${good}"]`)).toHaveCount(0);
  });
});

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('the gallery, the parameter form and its preview, and the picture read without JavaScript', async ({ page }) => {
    await signInWithTokensNoJs(page, aliceTokens());
    await page.goto('/templates');
    const card = page.locator('[data-testid="template-card"][data-name="QKD link"]');
    await card.getByTestId('template-open').click();
    await page.getByTestId('param-kme_image').selectOption(catalog.image.id);
    await page.getByTestId('param-kme_flavor').selectOption(catalog.flavor.id);
    await page.getByTestId('template-preview').click();
    await expect(page.getByTestId('plan-row')).toHaveCount(2);
    await page.goto('/experiment');
    await expect(page.getByTestId('experiment-picture').locator('svg')).toHaveCount(1);
  });
});
