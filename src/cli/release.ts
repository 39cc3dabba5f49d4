/** `cargo-pkcs11-agent release [--config FILE] [--socket PATH]`: close all sessions so other programs can use the devices. */
import { callAgent } from '../protocol/client.js'
import { USAGE } from './args.js'
import { socketArgs } from './status.js'

export async function release(argv: readonly string[]): Promise<number> {
  const { socket } = socketArgs(argv, USAGE.release)
  const result = await callAgent(socket, 'release')
  process.stdout.write(
    `closed the sessions of ${result.released} token(s); cached PINs are kept (use \`lock\` to forget them)\n`,
  )
  return 0
}
