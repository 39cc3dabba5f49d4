/**
 * `cargo-pkcs11-agent gateway …`: runs the verifying gateway (src/gateway, docs/gateway.md) in the
 * foreground. Prints one JSON line `{"url","indexUrl","port"}` on stdout once listening, then one
 * JSON line per request on stderr (never a token). SIGHUP reloads the keys file (so does a change
 * of the file); SIGINT/SIGTERM stop it.
 */
import { toAgentError } from '../lib/errors.js'
import { GATEWAY_FLAGS, loadGatewayConfig } from '../gateway/config.js'
import { startGateway } from '../gateway/server.js'
import { parseCommandArgs, USAGE } from './args.js'

export async function gateway(argv: readonly string[]): Promise<number> {
  const config = loadGatewayConfig(parseCommandArgs(argv, GATEWAY_FLAGS, USAGE.gateway).values)
  const line = (value: unknown): void => void process.stderr.write(JSON.stringify(value) + '\n')
  const running = await startGateway(config, {
    onEvent: line,
    onKeysReload: (result) =>
      line(
        'error' in result
          ? { event: 'keys-reload-failed', code: result.error.code, message: result.error.describe() }
          : { event: 'keys-reloaded', keys: result.keys },
      ),
  })
  process.stdout.write(
    JSON.stringify({
      url: running.url,
      indexUrl: running.indexUrl,
      port: running.port,
      keys: running.keys.size,
    }) + '\n',
  )
  return await new Promise<number>((resolve) => {
    const stop = (): void => {
      running.stop().then(
        () => resolve(0),
        (error: unknown) => {
          line({ event: 'stop-failed', message: toAgentError(error).describe() })
          resolve(1)
        },
      )
    }
    process.on('SIGHUP', () => running.keys.reload())
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
}
