#!/usr/bin/env node
// The agent and its management CLI. Every command is loaded lazily by the dispatcher (src/cli/main.ts).
import { main } from '../cli/main.js'

// exitCode, not exit(): stdout/stderr are flushed and a long-running `run` keeps its handles.
process.exitCode = await main(process.argv.slice(2))
