// Drives the official Courier Node SDK (@trycourier/courier, pinned in package.json) against the
// front door with `baseURL`, checking every answer against the response type the SDK declares
// (its .d.ts files). Run by tests/tests/courier_sdk.rs with COURIER_BASE_URL and COURIER_API_KEY;
// exits non-zero on the first mismatch.
'use strict';
const assert = require('node:assert/strict');
const Courier = require('@trycourier/courier').default;

const client = new Courier({
  baseURL: process.env.COURIER_BASE_URL,
  apiKey: process.env.COURIER_API_KEY,
  maxRetries: 0,
  timeout: 20_000,
});

// `spec` maps a field to its declared type; a trailing `?` allows undefined and null.
function shape(what, value, spec) {
  assert.equal(typeof value, 'object', `${what}: not an object: ${JSON.stringify(value)}`);
  assert.notEqual(value, null, `${what}: null`);
  for (const [field, t] of Object.entries(spec)) {
    const optional = t.endsWith('?');
    const type = optional ? t.slice(0, -1) : t;
    const v = value[field];
    if (optional && (v === undefined || v === null)) continue;
    const actual = Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
    assert.equal(actual, type, `${what}.${field}: expected ${t}, got ${JSON.stringify(v)}`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function eventually(what, f, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
}

const step = async (name, f) => {
  await f();
  console.log(`ok - ${name}`);
};

async function main() {
  await step('profiles', async () => {
    const created = await client.profiles.create('sdk_ada', { profile: { email: 'ada@example.org', name: 'Ada' } });
    shape('ProfileCreateResponse', created, { status: 'string' });
    assert.equal(created.status, 'SUCCESS');
    const got = await client.profiles.retrieve('sdk_ada');
    shape('ProfileRetrieveResponse', got, { profile: 'object', preferences: 'object?' });
    assert.equal(got.profile.email, 'ada@example.org');
    const replaced = await client.profiles.replace('sdk_ada', { profile: { email: 'ada@example.org', name: 'Ada L.' } });
    assert.equal(replaced.status, 'SUCCESS');
    await client.profiles.update('sdk_ada', { patch: [{ op: 'replace', path: '/name', value: 'Ada Lovelace' }] });
    assert.equal((await client.profiles.retrieve('sdk_ada')).profile.name, 'Ada Lovelace');
    await client.profiles.create('sdk_bob', { profile: { email: 'bob@example.org' } });
  });

  await step('tenants and users.tenants', async () => {
    const t = await client.tenants.update('sdk_acme', { name: 'Acme', properties: { plan: 'team' } });
    shape('Tenant', t, { id: 'string', name: 'string', properties: 'object?', parent_tenant_id: 'string?' });
    assert.equal(t.id, 'sdk_acme');
    const got = await client.tenants.retrieve('sdk_acme');
    assert.equal(got.name, 'Acme');
    const list = await client.tenants.list();
    shape('TenantListResponse', list, { has_more: 'boolean', items: 'array', type: 'string', url: 'string' });
    assert.ok(list.items.some((x) => x.id === 'sdk_acme'));
    await client.users.tenants.addSingle('sdk_acme', { user_id: 'sdk_ada', profile: { role: 'admin' } });
    const mine = await client.users.tenants.list('sdk_ada');
    shape('users.TenantListResponse', mine, { has_more: 'boolean', type: 'string', url: 'string', items: 'array?' });
    assert.ok(mine.items.some((a) => a.tenant_id === 'sdk_acme'));
    mine.items.forEach((a) => shape('TenantAssociation', a, { tenant_id: 'string', user_id: 'string?', profile: 'object?' }));
    const members = await client.tenants.listUsers('sdk_acme');
    shape('TenantListUsersResponse', members, { has_more: 'boolean', type: 'string', url: 'string', items: 'array?' });
    assert.ok(members.items.some((a) => a.user_id === 'sdk_ada'));
  });

  await step('lists and subscriptions', async () => {
    await client.lists.update('sdk.beta', { name: 'Beta users' });
    const l = await client.lists.retrieve('sdk.beta');
    shape('SubscriptionList', l, { id: 'string', name: 'string', created: 'string?', updated: 'string?' });
    assert.deepEqual([l.id, l.name], ['sdk.beta', 'Beta users']);
    await client.lists.subscriptions.add('sdk.beta', { recipients: [{ recipientId: 'sdk_ada' }] });
    await client.lists.subscriptions.subscribeUser('sdk_bob', { list_id: 'sdk.beta' });
    await client.lists.subscriptions.subscribeUser('sdk_carl', { list_id: 'sdk.beta' });
    await client.lists.subscriptions.unsubscribeUser('sdk_carl', { list_id: 'sdk.beta' });
    const subs = await client.lists.subscriptions.list('sdk.beta');
    shape('SubscriptionListResponse', subs, { items: 'array', paging: 'object' });
    shape('Paging', subs.paging, { more: 'boolean', cursor: 'string?' });
    subs.items.forEach((s) => shape('SubscriptionListResponse.Item', s, { recipientId: 'string', created: 'string?', preferences: 'object?' }));
    assert.deepEqual(subs.items.map((s) => s.recipientId).sort(), ['sdk_ada', 'sdk_bob']);
    const all = await client.lists.list({ pattern: 'sdk.*' });
    shape('ListListResponse', all, { items: 'array', paging: 'object' });
    assert.deepEqual(all.items.map((x) => x.id), ['sdk.beta']);
    await client.lists.update('sdk.gone', { name: 'Gone' });
    await client.lists.delete('sdk.gone');
    await assert.rejects(client.lists.retrieve('sdk.gone'), (e) => e.status === 404);
  });

  await step('inbound.trackEvent (409 idempotency_error on a repeated messageId)', async () => {
    const body = { event: 'SDK Signed Up', messageId: 'sdk-inbound-1', properties: { plan: 'team' }, type: 'track', userId: 'sdk_ada' };
    const r = await client.inbound.trackEvent(body);
    shape('InboundTrackEventResponse', r, { messageId: 'string' });
    assert.equal(r.messageId, 'sdk-inbound-1');
    await assert.rejects(client.inbound.trackEvent(body), (e) => e.status === 409 && e.error.type === 'idempotency_error');
  });

  let listRun;
  await step('automations.invoke (ad hoc, with a send-list step; by template) and automations.list', async () => {
    const adHoc = await client.automations.invoke.invokeAdHoc({
      automation: { steps: [{ action: 'send', recipient: 'sdk_ada', template: 'SDK_WELCOME' }] },
      data: { plan: 'team' },
    });
    shape('AutomationInvokeResponse', adHoc, { runId: 'string' });
    listRun = await client.automations.invoke.invokeAdHoc({
      automation: { steps: [{ action: 'send-list', list: 'sdk.beta', template: 'SDK_WELCOME' }] },
      data: { plan: 'beta' },
    });
    shape('AutomationInvokeResponse', listRun, { runId: 'string' });
    const byTemplate = await client.automations.invoke.invokeByTemplate('sdk-onboarding', { recipient: 'sdk_bob', data: { plan: 'pro' } });
    shape('AutomationInvokeResponse', byTemplate, { runId: 'string' });
    const templates = await client.automations.list();
    shape('AutomationTemplateListResponse', templates, { templates: 'array?', cursor: 'string?' });
    const t = templates.templates.find((x) => x.id === 'sdk-onboarding');
    assert.ok(t, JSON.stringify(templates));
    shape('AutomationTemplate', t, { id: 'string', name: 'string', version: 'string', createdAt: 'string?', updatedAt: 'string?' });
    assert.ok(['published', 'draft'].includes(t.version));
  });

  await step('messages (one per list subscriber, each with its own status)', async () => {
    const forList = await eventually('both list messages delivered', async () => {
      const mine = [];
      for (const recipient of ['sdk_ada', 'sdk_bob']) {
        const page = await client.messages.list({ recipient });
        shape('MessageListResponse', page, { paging: 'object', results: 'array' });
        mine.push(...page.results.filter((m) => m.id.startsWith(listRun.runId)));
      }
      return mine.length === 2 && mine.every((m) => m.status === 'DELIVERED') && mine;
    });
    assert.notEqual(forList[0].id, forList[1].id);
    for (const m of forList) {
      shape('MessageDetails', m, { id: 'string', enqueued: 'number', event: 'string', notification: 'string', recipient: 'string', status: 'string', delivered: 'number?', sent: 'number?' });
      const one = await client.messages.retrieve(m.id);
      shape('MessageRetrieveResponse', one, { id: 'string', status: 'string', recipient: 'string', providers: 'array?' });
      assert.equal(one.id, m.id);
    }
    assert.deepEqual(forList.map((m) => m.recipient).sort(), ['sdk_ada', 'sdk_bob']);
    await eventually('the template run message', async () => {
      const page = await client.messages.list({ recipient: 'sdk_bob' });
      return page.results.some((m) => !m.id.startsWith(listRun.runId));
    });
  });

  console.log('# Courier SDK: all checks passed');
}

main().catch((e) => {
  console.error(`not ok - ${e.stack || e}`);
  process.exit(1);
});
