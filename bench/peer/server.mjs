// tus-node-server as the reference peer for tether's benchmark.
//
// Usage: node server.mjs PORT DATA_DIR
// Listens on 127.0.0.1:PORT, serves the tus protocol under /files/ and
// stores each upload as DATA_DIR/<id> (plus DATA_DIR/<id>.json metadata),
// which is where bench/run.py looks to verify the sha256.
import http from 'node:http';
import process from 'node:process';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

function parseArgs(argv) {
  if (argv.length !== 2) {
    console.error('usage: node server.mjs PORT DATA_DIR');
    process.exit(2);
  }
  const port = Number.parseInt(argv[0], 10);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error(`bad port: ${argv[0]}`);
    process.exit(2);
  }
  return { port, directory: argv[1] };
}

const { port, directory } = parseArgs(process.argv.slice(2));

const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
});

const server = http.createServer((req, res) => tus.handle(req, res));
// The default 5 s keep-alive timeout could close an idle benchmark
// connection between workload phases; a longer one keeps runs comparable.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;
server.requestTimeout = 0;

// Exit promptly on SIGTERM so run.py's stop path is fast and deterministic.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}

server.listen(port, '127.0.0.1', () => {
  // run.py waits for the port to accept connections; this line is for humans.
  console.log(`tus-node-server listening on http://127.0.0.1:${port}/files/ (data: ${directory})`);
});
