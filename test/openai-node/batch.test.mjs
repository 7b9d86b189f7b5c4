// The official OpenAI Node client against llmq's Batch API, unchanged:
// upload a file, create a batch, poll it to completed, read its output;
// list and page; cancel; a key that may not read another key's batch;
// delete. Run by test/integration/batch_node_test.go with
//   node batch.test.mjs <base URL> <key> <other key> <model> <slow model>
// It prints one line per check and exits non-zero at the first failure.
import OpenAI, { toFile } from 'openai';

const [baseURL, key, otherKey, model, slowModel] = process.argv.slice(2);
const client = new OpenAI({ baseURL: baseURL + '/v1', apiKey: key, maxRetries: 0, timeout: 10_000 });
const other = new OpenAI({ baseURL: baseURL + '/v1', apiKey: otherKey, maxRetries: 0, timeout: 10_000 });

function check(cond, what) {
  if (!cond) {
    throw new Error('check failed: ' + what);
  }
  console.log('ok: ' + what);
}

function lines(prefix, n, m) {
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push(JSON.stringify({
      custom_id: `${prefix}-${i}`, method: 'POST', url: '/v1/chat/completions',
      body: { model: m, messages: [{ role: 'user', content: `${prefix}-${i}` }] },
    }));
  }
  return out.join('\n') + '\n';
}

async function upload(name, text) {
  return client.files.create({ file: await toFile(Buffer.from(text), name), purpose: 'batch' });
}

// poll waits for the batch to reach one of statuses (at most 60 s).
async function poll(id, ...statuses) {
  for (let i = 0; i < 1200; i++) {
    const b = await client.batches.retrieve(id);
    if (statuses.includes(b.status)) {
      return b;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`batch ${id} did not reach ${statuses}`);
}

async function results(fileID) {
  if (!fileID) {
    return [];
  }
  const text = await (await client.files.content(fileID)).text();
  return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
}

const input = await upload('node-input.jsonl', lines('node', 8, model));
check(input.id.startsWith('file-') && input.purpose === 'batch' && input.filename === 'node-input.jsonl', 'upload a batch file');

const batch = await client.batches.create({
  input_file_id: input.id, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { from: 'node' },
});
check(batch.status === 'validating' && batch.metadata.from === 'node', 'create a batch');
const done = await poll(batch.id, 'completed', 'failed', 'expired');
check(done.status === 'completed', `the batch completed (${done.status})`);
check(done.request_counts.total === 8 && done.request_counts.completed === 8 && done.request_counts.failed === 0, 'request_counts');
const out = await results(done.output_file_id);
const ids = out.map((l) => l.custom_id).sort();
check(JSON.stringify(ids) === JSON.stringify([...Array(8).keys()].map((i) => `node-${i}`).sort()), 'every custom_id once in the output');
check(out.every((l) => l.response.status_code === 200 && l.response.body.choices[0].message.content.length > 0), 'served chat completions');
check(done.error_file_id === null, 'no error file');

try {
  await other.batches.retrieve(batch.id);
  check(false, 'another key reads the batch');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError, `another key may not read the batch (${e.status})`);
}

const slowInput = await upload('node-slow.jsonl', lines('slow', 6, slowModel));
const slow = await client.batches.create({ input_file_id: slowInput.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
await poll(slow.id, 'in_progress');
const cancelling = await client.batches.cancel(slow.id);
check(cancelling.status === 'cancelling', `cancel (${cancelling.status})`);
const cancelled = await poll(slow.id, 'cancelled');
const all = [...await results(cancelled.output_file_id), ...await results(cancelled.error_file_id)];
check(all.length === 6 && new Set(all.map((l) => l.custom_id)).size === 6, 'a cancelled batch accounts for every line once');
check(all.filter((l) => l.error && l.error.code === 'batch_cancelled').length >= 4, 'lines not started end as batch_cancelled');

const seen = [];
for await (const b of client.batches.list({ limit: 1 })) {
  seen.push(b.id);
}
check(seen.length === 2 && seen.includes(batch.id) && seen.includes(slow.id), 'list the batches page by page');

const files = [];
for await (const f of client.files.list({ purpose: 'batch' })) {
  files.push(f.id);
}
check(files.includes(input.id) && files.includes(slowInput.id), 'list the files');

const del = await client.files.delete(input.id);
check(del.deleted === true && del.id === input.id, 'delete a file');
try {
  await client.files.retrieve(input.id);
  check(false, 'a deleted file is gone');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError, 'a deleted file is gone');
}
console.log('PASS');
