/**
 * The agent's socket methods, one file each, behind one table the compiler checks against the
 * method map (src/protocol/methods.ts): a method missing here, or answering the wrong shape, does
 * not build.
 */
import type { Method } from '../../protocol/methods.js'
import { keygen } from './keygen.js'
import { lock } from './lock.js'
import { login } from './login.js'
import { logout } from './logout.js'
import type { MethodHandler } from './method.js'
import { ping } from './ping.js'
import { pubkey } from './pubkey.js'
import { release } from './release.js'
import { reload } from './reload.js'
import { sign } from './sign.js'
import { status } from './status.js'

export const METHOD_HANDLERS: { readonly [M in Method]: MethodHandler<M> } = Object.freeze({
  ping,
  status,
  lock,
  release,
  reload,
  pubkey,
  sign,
  login,
  logout,
  keygen,
})
