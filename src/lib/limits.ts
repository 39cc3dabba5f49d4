/**
 * Every limit the project enforces, in one place, with the reason for its value.
 * Change a number here, not at the call site.
 */
export const LIMITS = Object.freeze({
  /** cargo's credential protocol: one JSON line per message. Real requests are < 4 KiB even with
   * the 401 response headers cargo forwards; anything far larger is an attack or a bug. */
  cargoLineMaxBytes: 64 * 1024,
  /** Agent socket frames. A local agent exchanges small JSON messages; `ws` would accept 100 MiB. */
  socketFrameMaxBytes: 64 * 1024,
  /** Socket directory and socket file modes: only the owning user may connect. */
  socketDirMode: 0o700,
  socketFileMode: 0o600,
  /** Simultaneous client connections the agent serves. At the cap a new one takes the place of the
   * longest-idle connection, or of the oldest of a peer holding more than connectionsPerPeer;
   * only when neither exists is it refused with AGENT_BUSY (docs/agent-protocol.md, Limits). */
  maxConnections: 64,
  /** A full agent with a process waiting also takes a slot from the peer process (SO_PEERCRED pid)
   * that holds the most connections, if it holds more than this many and at least two more than the
   * waiting one: its oldest connection running no request but pings is closed. A connection that
   * only pings costs the agent a slot without work, and a flooder keeping 64 of them busier than
   * connectionEvictIdleMs locked every shim out. The shim and the CLI hold one connection per
   * process (cargo starts a shim per request), so they never lose one; one program holding more
   * loses only those running nothing, and only while another process waits. */
  connectionsPerPeer: 4,
  /** A client must send its request this soon after connecting (slowloris guard). */
  requestReadTimeoutMs: 5_000,
  /** When every connection is busy, a new one waits this long for a slot before AGENT_BUSY: slots
   * free up within milliseconds when clients only reconnect, as the shim does for every request. */
  connectionAdmitWaitMs: 2_000,
  /** A connection idle this long (or silent this long after connecting) may be closed to make room
   * for a new one; an honest client sends its request, or its next one, well within it. */
  connectionEvictIdleMs: 250,
  /** After its first frame, a connection with nothing in flight and no complete frame for this long
   * is closed (so is one whose answers stay unread this long). The shim holds a connection only for
   * one request; without this bound 64 idle connections would lock every other client out. */
  connectionIdleTimeoutMs: 10_000,
  /** Unsent output per connection above which the agent stops reading that connection until the
   * client has read (socket 'drain'): four full frames. A client that writes tiny bad frames and
   * never reads would otherwise make the agent queue an error answer per frame without end. */
  socketOutputMaxBytes: 4 * 64 * 1024,
  /** Requests one connection may have running at once: below maxPendingSigns, so a single
   * connection cannot fill a device's wait queue and starve other clients. */
  maxInflightPerConnection: 8,
  /** Requests past that cap wait in a per-connection queue of this many requests and bytes (300
   * pipelined signs, ~330 bytes each, fit); past it a request is answered AGENT_BUSY at once. */
  maxQueuedRequestsPerConnection: 512,
  maxQueuedRequestBytesPerConnection: 256 * 1024,
  /** Refusals (bad frames, busy, idle closes) are logged at once, then summarised at most once per
   * this interval per kind, so a flood cannot turn the agent log into a disk filler. */
  refusalLogIntervalMs: 1_000,
  /** A refusal's log line is cut to this many characters: its text can quote the client (a protocol
   * version string of 60 KB), and one such line a second would still fill the disk. */
  refusalLogTextMaxChars: 500,
  /** How often the agent checks that its socket path still holds its own socket (inode). A deleted
   * or replaced socket leaves the agent unreachable, and the next shim would start a second one. */
  socketWatchIntervalMs: 2_000,
  /** Upper bound for one request inside the agent, including a touch or a human confirmation. */
  requestTimeoutMs: 120_000,
  /** Device signs that may wait at once (each holds a libuv worker thread; see UV_THREADPOOL_SIZE). */
  maxPendingSigns: 16,
  /** libuv pool size the agent's entry sets (src/bin/cargo-pkcs11-agent.cts): pending signs + headroom
   * for fs/dns/crypto work. */
  uvThreadpoolSize: 24,
  /** Worker threads that self-verify device signatures (src/signer/verify-pool.ts): one per core up
   * to this many. A verify is ~0.8 ms of CPU; more threads than cores only add context switches. */
  verifyWorkersMax: 4,
  /** A token's health check (C_GetTokenInfo, ~70 µs of event loop on SoftHSM) at most this old
   * serves a request's session acquire (src/pkcs11/device.ts): the policy's status read for the same
   * request just made it. A token removed in between fails the sign itself (CKR_DEVICE_REMOVED), which
   * reconnects as the check would. */
  tokenInfoReuseMs: 10,
  /** Sessions opened per token for concurrent signing (one operation per PKCS#11 session). */
  sessionsPerToken: 16,
  /** Requests that may wait for a session of one token once all are busy (src/pkcs11/session-pool.ts):
   * enough for every connection's in-flight requests at 64 clients (a burst of signs each a few ms
   * long queues for tens of ms instead of being refused); past it, AGENT_BUSY at once. */
  sessionWaitersMax: 256,
  /** How long a request waits for a session before AGENT_BUSY: a queue of quick signs drains far
   * faster; sessions held this long are waiting for touches, and a refusal tells the client now. */
  sessionWaitMs: 1_000,
  /** How long the shim waits for an agent it started to begin listening. */
  agentStartWaitMs: 5_000,
  /** An agent that exits while the shim waits for it left its reason in agent.log: the shim prints at
   * most this many of its last lines (a config error with its did-you-mean is two or three lines). */
  agentExitLogLines: 20,
  /** agent.log is renamed to agent.log.1 (replacing the previous one) once it is this large, when an
   * agent starts or writes a line: a few thousand start-up and reload lines, never unbounded. */
  agentLogMaxBytes: 1024 * 1024,
  /** `stop`: how long the agent's graceful shutdown may take (shutdownGraceMs plus closing devices). */
  agentStopWaitMs: 15_000,
  /** Graceful shutdown: how long in-flight requests may still finish after SIGTERM. */
  shutdownGraceMs: 10_000,
  /** Default `token-max-age-seconds` and the verifier's default window. RFC 3231 recommends registries
   * accept tokens up to 15 minutes old (the maximum); cargo's test registry accepts 60 s. */
  defaultTokenMaxAgeSeconds: 60,
  maxTokenMaxAgeSeconds: 15 * 60,
  /** Accepted clock difference between the signer's and the registry's clocks (iat in the future). */
  defaultClockSkewSeconds: 30,
  /** cargo stops reusing a cached token this long before its `expiration` (auth/mod.rs). */
  cargoCacheReuseMarginSeconds: 60,
  /** We end read-token cache validity this much earlier still, for clock drift and request latency. */
  readTokenCacheSafetySeconds: 10,
  /** Longest crate name / version / command line / URL shown in a prompt: a hostile program could
   * pass a huge argv to push the real request text off the pinentry dialog. */
  intentFieldMaxChars: 200,
  /** Audit log: a command line or crate name longer than this is cut (a hostile argv must not bloat
   * every line); one audit line stays far below the size a single O_APPEND write keeps whole. */
  auditFieldMaxChars: 1_024,
  /** Audit lines one group commit writes and fdatasyncs together (src/audit/log.ts): one fsync costs
   * 0.2-2 ms whatever its size, so concurrent requests share it; the cap bounds one write(2) (64 lines
   * of at most a few KiB stay one O_APPEND write, which Linux keeps whole against other writers) and
   * how many requests one failed write fails. */
  auditBatchMaxLines: 64,
  /** Size at which the live audit log is renamed to a timestamped generation and a new one started
   * (src/audit/rotation.ts): about 25,000 lines, so `log` tails stay fast. Nothing is deleted. */
  auditLogRotateBytes: 8 * 1024 * 1024,
  /** Longest PIN we accept from any source. PKCS#11 tokens report ulMaxPinLen (PIV: 8, SoftHSM: 255). */
  pinMaxBytes: 256,
  /** A PIN file larger than this is not a PIN file (someone pointed pin-file at the wrong thing). */
  pinFileMaxBytes: 1_024,
  /** Assuan (pinentry) lines are at most 1000 bytes including the command (libassuan ASSUAN_LINELENGTH). */
  assuanLineMaxBytes: 1_000,
  /** How long a human has to answer pinentry (its own SETTIMEOUT, and our kill timer after it); well
   * under requestTimeoutMs so the request still ends with a clear PIN_ENTRY_FAILED. */
  pinentryTimeoutMs: 60_000,
  /** How long a request that cannot ask for a PIN (no terminal, forwarded) waits for another
   * request's open PIN question before it fails PIN_REQUIRED: a human at a terminal types a PIN in
   * seconds, and a question nobody answers must not hold such requests (src/policy/login.ts). */
  pinQueryWaitMs: 15_000,
  /** The agent's own yes/no on the requester's terminal: as long as a pinentry gets, then "no". */
  terminalConfirmTimeoutMs: 60_000,
  /** A desktop notifier (notify-send, osascript) that hangs is killed after this; it never fails a request. */
  desktopNotifyTimeoutMs: 2_000,
  /** Default `touch-notice-after-ms`: signature not back after this long, announce the pending touch
   * (comparable agents use 0.2-5 s; SoftHSM and TPM sign in < 10 ms and a YubiKey without touch in
   * ~0.2 s, so a wait this long means the device waits for a human). */
  touchNoticeAfterMs: 1_000,
  /** Largest `touch-notice-after-ms` the config accepts: a notice must come before the touch timeout
   * below, or the user learns about the touch only from its failure. */
  touchNoticeMaxMs: 20_000,
  /** Give up waiting for a touch after this long (YubiKey itself times out after 15 s). */
  touchTimeoutMs: 30_000,
  /** One yubico-piv-tool run during `setup` (list, attest, generate: a P-384 generation takes
   * under a second on a YubiKey 5; a stuck pcscd must not hang setup). */
  pivToolTimeoutMs: 60_000,
  /** Default `pin-cache-idle-seconds` / `pin-cache-max-seconds`: a typed PIN is forgotten after
   * 15 min unused and 8 h (a working day) after it was typed, so a session of publishes asks once.
   * gpg-agent's defaults (600 s / 7200 s) suit a key used for every commit; a cargo key sits idle longer. */
  pinCacheIdleSeconds: 900,
  pinCacheMaxSeconds: 28_800,
  /** Largest `pin-cache-*-seconds` and `release-after-idle-seconds`: a week; longer means "never"
   * under another name, and a PIN held that long outlives any session it was typed for. */
  configLifetimeMaxSeconds: 7 * 86_400,
  /** How often expired PINs are wiped from memory even when no request comes in. */
  pinCacheSweepMs: 10_000,
  /** Default `mutations-per-hour`: sliding-window limit on mutations (publish/yank/unyank/owners) per
   * registry. A release train publishes a few crates; 30 an hour stops a runaway script early. */
  defaultMutationsPerHour: 30,
  /** Default `confirm` for mutations: a yes/no showing the intent. Never `none` by default: a script
   * that reaches the agent socket must not publish in the user's name unasked (docs/policy.md). */
  defaultConfirm: 'prompt' as const,
  /** Default `forwarded`: a request through an SSH-forwarded socket may read, never mutate. The
   * remote host holds the socket and may be the weaker machine; like OpenSSH's destination
   * constraints (`ssh-add -h`), what it may use is opt-in (docs/ssh-forwarding.md). */
  defaultForwarded: 'read' as const,
  /** Default `pinentry-program`: the name gpg-agent uses, found on PATH (a distribution links it to
   * the pinentry flavour it installed: curses, gtk, qt). */
  defaultPinentryProgram: 'pinentry',
  /** Largest `mutations-per-hour`: far above any release train, still a bound. */
  maxMutationsPerHour: 100_000,
  /** Longest token we build or verify. cargo sends it as an HTTP header value, and servers commonly
   * cap a header at 8 KiB; a real token is ~600 characters (publish, with footer). Verifying checks the
   * length before decoding anything. */
  tokenMaxChars: 8 * 1_024,
  /** Longest claim value we put into a token (index URL, crate name, version, subject): crates.io
   * caps names at 64 characters; this leaves room for long URLs and SemVer build metadata. */
  tokenClaimMaxChars: 2_048,
  /** Largest publish body the registry kit and the gateway accept (crates.io's limit is 10 MiB). */
  registryMaxUploadBytes: 10 * 1024 * 1024,
  /** Largest body of any other Web API request (owners: `{"users": [...]}`); cargo sends a few hundred bytes. */
  registryMaxRequestBodyBytes: 64 * 1024,
  /** Mutation tokens the single-use store remembers at once. Each entry is a 64-character hash and a
   * time, kept until the token's `iat` + max age (after that the verifier refuses it as stale anyway);
   * 100 000 entries is ~15 MB, far above what registered users publish in 15 minutes. When full, new
   * mutations are refused (RATE_LIMITED) rather than forgetting a token that could then be replayed. */
  registryReplayStoreMaxEntries: 100_000,
  /** A client must finish sending its request body this soon (slowloris guard for the kit and gateway). */
  registryBodyReadTimeoutMs: 30_000,
  /** The gateway gives up on the upstream after this long without an answer (connect + response head). */
  gatewayUpstreamTimeoutMs: 30_000,
  /** Largest upstream `config.json` the gateway reads to rewrite (a real one is ~100 bytes). */
  gatewayConfigJsonMaxBytes: 64 * 1024,
  /** Key files the gateway and `verify --keys` read: one line per key, ~110 bytes each. */
  keysFileMaxBytes: 1024 * 1024,
  /** After a change of the keys file is seen, wait this long before reloading (editors write in steps). */
  keysFileReloadDebounceMs: 100,
})
