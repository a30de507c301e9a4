// The client script of proxy/tests/it/clients.rs, with the npm package etcd3 (unmodified):
// put/get, a Txn, a watch, a lease granted, attached, kept alive and revoked, a delete with
// its previous value, logged in with a binding's user name and password. Every value written
// holds the marker "clear-text"; the test then reads etcd directly and finds none of it.
// Usage: NODE_PATH=<tools>/node-etcd3/node_modules node node-etcd3.js URL USER PASSWORD PREFIX
// Prints one "ok <step>" line per step; exits 1 with the error on the first failure.
'use strict';
const { Etcd3 } = require('etcd3');

const [url, username, password, prefix] = process.argv.slice(2);
const client = new Etcd3({ hosts: url, auth: { username, password } });
const key = (name) => prefix + name;
const value = (step) => `clear-text of node etcd3, ${step}`;

function expect(what, actual, wanted) {
  if (actual !== wanted) {
    throw new Error(`${what}: got ${JSON.stringify(actual)}, wanted ${JSON.stringify(wanted)}`);
  }
  console.log(`ok ${what}`);
}

async function main() {
  await client.put(key('plain')).value(value('put'));
  expect('get', await client.get(key('plain')).string(), value('put'));

  const txn = await client
    .if(key('plain'), 'Version', '>', 0)
    .then(client.put(key('txn')).value(value('txn')))
    .else(client.put(key('not-taken')).value('else'))
    .commit();
  expect('txn succeeded', txn.succeeded, true);
  expect('txn put', await client.get(key('txn')).string(), value('txn'));

  const watcher = await client.watch().prefix(key('watched/')).create();
  const event = new Promise((resolve, reject) => {
    watcher.on('put', (kv) => resolve(kv.value.toString()));
    watcher.on('error', reject);
  });
  await client.put(key('watched/1')).value(value('watch'));
  expect('watch event', await event, value('watch'));
  await watcher.cancel();

  const lease = client.lease(30, { autoKeepAlive: false });
  await lease.grant();
  await lease.put(key('leased')).value(value('lease'));
  expect('leased put', await client.get(key('leased')).string(), value('lease'));
  const alive = await lease.keepaliveOnce();
  expect('keep-alive ttl > 0', Number(alive.TTL) > 0, true);
  await lease.revoke();
  expect('revoke deletes the leased key', await client.get(key('leased')).string(), null);

  const previous = await client.delete().key(key('plain')).getPrevious();
  expect('delete previous value', previous[0].value.toString(), value('put'));
  expect('deleted', await client.get(key('plain')).string(), null);
}

main()
  .then(() => {
    client.close();
    console.log('done');
  })
  .catch((error) => {
    console.error(`node etcd3 failed: ${error && error.stack ? error.stack : error}`);
    client.close();
    process.exit(1);
  });
