#!/usr/bin/env node
// The agent and its management CLI. CommonJS, so that this runs before any asynchronous I/O: libuv
// sizes its worker pool from UV_THREADPOOL_SIZE once, when the pool starts, and the ESM loader starts
// it to read module files (docs/pkcs11-platforms.md §3). This require() is synchronous (an ESM leaf);
// every command is loaded afterwards, lazily, by the dispatcher (src/cli/main.ts).
import limits = require('../lib/limits.js')

const { uvThreadpoolSize } = limits.LIMITS

// A device sign that waits for a touch holds a pool thread for the whole wait. A larger value from
// the environment is kept.
if (!(Number(process.env['UV_THREADPOOL_SIZE']) >= uvThreadpoolSize))
  process.env['UV_THREADPOOL_SIZE'] = String(uvThreadpoolSize)

// exitCode, not exit(): stdout/stderr are flushed and a long-running `run` keeps its handles.
void import('../cli/main.js').then(async ({ main }) => {
  process.exitCode = await main(process.argv.slice(2))
})
