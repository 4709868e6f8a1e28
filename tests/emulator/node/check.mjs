// The emulator through Google's Node.js client (@google-cloud/tasks), over gRPC or over its
// REST fallback: queue and task CRUD, and a task with an OIDC token to the Python test's target.
// Run by tests/emulator/test_emulator_node.py; prints one JSON line of what it saw.
import {CloudTasksClient} from '@google-cloud/tasks';
import {createRequire} from 'node:module';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');

const [mode, grpcAddress, httpUrl, targetUrl, location] = process.argv.slice(2);
const [host, port] = grpcAddress.split(':');
const http = new URL(httpUrl);
// No credentials: the REST fallback sends its requests through this (plain fetch, no token).
const anonymous = {
  getRequestHeaders: async () => new Headers(),
  fetch: (url, init) => fetch(url, {method: init.method, headers: init.headers, body: init.body, signal: init.signal}),
};
const client = mode === 'grpc'
  ? new CloudTasksClient({servicePath: host, port: Number(port), sslCreds: grpc.credentials.createInsecure()})
  : new CloudTasksClient({fallback: true, protocol: 'http', apiEndpoint: http.hostname,
                          port: Number(http.port), authClient: anonymous});

const out = {};
const name = `${location}/queues/node-${mode}`;
const [queue] = await client.createQueue({parent: location, queue: {name, rateLimits: {maxDispatchesPerSecond: 5}}});
out.created = queue.name;
out.burst = queue.rateLimits.maxBurstSize;
const [got] = await client.getQueue({name});
out.state = got.state;
const [queues] = await client.listQueues({parent: location});
out.listed = queues.map(q => q.name).filter(n => n === name);
const [updated] = await client.updateQueue({queue: {name, rateLimits: {maxDispatchesPerSecond: 7}},
                                            updateMask: {paths: ['rate_limits.max_dispatches_per_second']}});
out.updatedRate = updated.rateLimits.maxDispatchesPerSecond;
out.paused = (await client.pauseQueue({name}))[0].state;
const [task] = await client.createTask({parent: name, task: {
  name: `${name}/tasks/from-node`,
  httpRequest: {url: targetUrl, httpMethod: 'POST', body: Buffer.from(`hello from ${mode}`),
                headers: {'Content-Type': 'text/plain'},
                oidcToken: {serviceAccountEmail: 'node@test-project.iam.gserviceaccount.com'}}}});
out.task = task.name;
out.method = task.httpRequest.httpMethod;
const [tasks] = await client.listTasks({parent: name});
out.tasks = tasks.map(t => t.name);
const [extra] = await client.createTask({parent: name, task: {httpRequest: {url: targetUrl + '/never'}}});
await client.deleteTask({name: extra.name});
try {
  await client.getTask({name: extra.name});
  out.deletedGone = false;
} catch (e) {
  out.deletedGone = e.code === 5;  // NOT_FOUND, whichever transport
  out.deletedMessage = e.details || e.message;
}
try {
  await client.createTask({parent: name, task: {name: `${name}/tasks/from-node`, httpRequest: {url: targetUrl}}});
  out.duplicate = 'accepted';
} catch (e) {
  out.duplicate = e.code;  // ALREADY_EXISTS = 6
}
out.resumed = (await client.resumeQueue({name}))[0].state;
console.log(JSON.stringify(out));
await client.close();
