/** `cargo-pkcs11-agent lock [--config FILE] [--socket PATH]`: forget every cached PIN and log the tokens out. */
import { callAgent } from '../protocol/client.js'
import { USAGE } from './args.js'
import { socketArgs } from './status.js'

export async function lock(argv: readonly string[]): Promise<number> {
  const { socket } = socketArgs(argv, USAGE.lock)
  const result = await callAgent(socket, 'lock')
  process.stdout.write(
    `forgot ${result.forgotten} PIN(s), closed the sessions of ${result.released} token(s)\n`,
  )
  return 0
}
