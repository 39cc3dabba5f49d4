/**
 * The keys file of `verify --keys` and the gateway: one registered key per line, `k3.public.…`,
 * optionally followed by whitespace and the user it belongs to; `#` starts a comment. A line may
 * also name the subject issued with the key: `k3.public.… alice sub=team-ci`. Keys are found by
 * their `k3.pid`, the `kip` of the tokens they sign (docs/registry-kit.md, "Keys file").
 */
import { AgentError } from '../lib/errors.js'
import { k3Pid } from '../keys/paserk.js'

export interface RegisteredKey {
  /** `k3.public.…` */
  readonly publicKey: string
  /** Who the key belongs to (for logs and for the application); undefined when the line has none. */
  readonly user?: string | undefined
  /** The `sub` tokens signed by this key must carry; undefined means tokens carry none. */
  readonly subject?: string | undefined
}

/** An untrusted footer `kip` for a message: as is when it has the k3.pid shape, else JSON-quoted and cut. */
export function printableKip(kip: string): string {
  return /^k3\.pid\.[A-Za-z0-9_-]{44}$/.test(kip) ? kip : JSON.stringify(kip.slice(0, 80))
}

/** kip (`k3.pid.…`) -> key. */
export type KeyRing = ReadonlyMap<string, RegisteredKey>

/** Parses a keys file; every bad line is reported with its number, none is skipped silently. */
export function parseKeysFile(text: string, source = 'the keys file'): KeyRing {
  const keys = new Map<string, RegisteredKey>()
  const problems: string[] = []
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim()
    if (line === '') return
    const [publicKey = '', ...rest] = line.split(/\s+/)
    let user: string | undefined
    let subject: string | undefined
    for (const word of rest) {
      if (word.startsWith('sub=') && word.length > 4 && subject === undefined) subject = word.slice(4)
      else if (!word.startsWith('sub=') && user === undefined) user = word
      else {
        problems.push(`line ${i + 1}: unexpected ${JSON.stringify(word.slice(0, 40))}`)
        return
      }
    }
    let kip: string
    try {
      kip = k3Pid(publicKey)
    } catch (error) {
      problems.push(`line ${i + 1}: ${(error as Error).message}`)
      return
    }
    if (keys.has(kip)) {
      problems.push(`line ${i + 1}: the key is listed twice`)
      return
    }
    keys.set(kip, {
      publicKey,
      ...(user === undefined ? {} : { user }),
      ...(subject === undefined ? {} : { subject }),
    })
  })
  if (problems.length > 0) {
    throw new AgentError('CONFIG_INVALID', `${source} is not valid: ${problems.slice(0, 5).join('; ')}`, {
      remedy:
        'Each line is `k3.public.… [user] [sub=SUBJECT]`, as `cargo-pkcs11-agent pubkey` prints the key',
    })
  }
  return keys
}
