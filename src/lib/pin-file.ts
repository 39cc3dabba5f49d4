/**
 * `pin-source = "file"`: a CI secret on disk. Refused unless only its owner can read it (like ssh
 * refusing a private key with loose permissions), so a PIN never sits in a file other users see;
 * the gateway's upstream token file gets the same check (docs/gateway.md).
 * Lives outside src/policy/ because policy does no file I/O; the agent hands it to Policy as a dep.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { AgentError } from './errors.js'
import { LIMITS } from './limits.js'
import { Pin } from './secret.js'

/**
 * Refuses a file holding a secret (`secret`: "PIN", "upstream token") that another user owns or that
 * group or others can access; `reader` is the process that reads it. `info` is the opened file's fstat.
 */
export function checkSecretFile(
  info: { readonly uid: number; readonly mode: number },
  path: string,
  secret: string,
  reader: string,
): void {
  const uid = process.getuid?.()
  if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
    throw new AgentError(
      'CONFIG_INVALID',
      `The ${secret} file ${path} belongs to another user (uid ${info.uid})`,
      {
        remedy: `Give the file to the ${reader}'s user: chown ${uid} ${path}`,
      },
    )
  }
  if ((info.mode & 0o077) !== 0) {
    throw new AgentError(
      'CONFIG_INVALID',
      `The ${secret} file ${path} is accessible by group or others (mode ${(info.mode & 0o777).toString(8).padStart(3, '0')}); the ${secret} was not used`,
      {
        remedy: `Restrict it to its owner: chmod 600 ${path}`,
        data: { mode: (info.mode & 0o777).toString(8) },
      },
    )
  }
}

export async function readPinFile(path: string): Promise<Pin> {
  let handle
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOCTTY)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new AgentError('PIN_REQUIRED', `The PIN file ${path} cannot be read (${code ?? 'error'})`, {
      remedy:
        code === 'ENOENT'
          ? `Create ${path} containing only the PIN (chmod 600), or fix pin-file in the agent config`
          : `Make ${path} readable by the agent's user only (chmod 600)`,
      cause: error,
    })
  }
  try {
    // fstat of the opened file, not stat of the path: no window to swap the file after the check.
    const info = await handle.stat()
    if (!info.isFile()) {
      throw new AgentError('CONFIG_INVALID', `The PIN file ${path} is not a regular file`, {
        remedy: 'Point pin-file at a file that contains only the PIN',
      })
    }
    checkSecretFile(info, path, 'PIN', 'agent')
    if (info.size > LIMITS.pinFileMaxBytes) {
      throw new AgentError(
        'CONFIG_INVALID',
        `The PIN file ${path} is ${info.size} bytes; a PIN file holds only the PIN`,
        { remedy: 'Check that pin-file names the right file' },
      )
    }
    const buffer = Buffer.alloc(LIMITS.pinFileMaxBytes + 1)
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0)
    let end = bytesRead
    // One trailing newline (what `echo` and editors add) is not part of the PIN.
    if (end > 0 && buffer[end - 1] === 0x0a) end -= 1
    if (end > 0 && buffer[end - 1] === 0x0d) end -= 1
    const pin = Buffer.from(buffer.subarray(0, end))
    buffer.fill(0)
    if (pin.length === 0)
      throw new AgentError('PIN_REQUIRED', `The PIN file ${path} is empty`, {
        remedy: `Write the PIN into ${path}`,
      })
    if (pin.length > LIMITS.pinMaxBytes) {
      pin.fill(0)
      throw new AgentError('PIN_INVALID', `The PIN in ${path} is longer than ${LIMITS.pinMaxBytes} bytes`, {
        remedy: 'Check that pin-file names the right file',
      })
    }
    return new Pin(pin)
  } finally {
    await handle.close()
  }
}
