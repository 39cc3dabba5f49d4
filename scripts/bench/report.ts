/**
 * The issue-13 table from one `npm run bench` run: reads the figures scripts/bench.sh left in
 * .state/bench/ (sign, load, loop, rss, publish, devices .json), prints every row side by side with
 * its baseline and its spread over rounds, writes the `ratios` JSON (--json FILE), the table as
 * Markdown (--markdown FILE, for BENCHMARKS.md) and the throughput / p99 chart against 1, 4, 16, 64
 * clients (--chart FILE.svg; a PNG beside it when rsvg-convert is installed).
 *
 * Usage: node dist/scripts/bench/report.js [--dir .state/bench] [--json FILE] [--markdown FILE] [--chart FILE.svg]
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

interface SignRow {
  variant: string
  medianMs: number
}
interface LoadRow {
  phase: string
  generatorCores: number
  perSecond: number
  perRound: number[]
  p50Ms: number
  p99Ms: number
  refusedShare: number
  cpuMsPerOp: number
  mainCpuMsPerOp?: number
}
interface SweepRow {
  clients: number
  phase: 'device' | 'agent'
  perSecond: number
  p99Ms: number
}
interface Ceiling {
  cores: number
  deviceCpuMsPerSign: number
  verifyCpuMsPerOp: number
  agentCpuMsPerRequest: number
  agentMainThreadCpuMsPerRequest: number
  throughputCeilingVsRaw: number
  agentCpuBoundVsRaw: number
}
interface PublishMode {
  agentMs: number
  tokenMs: number
  ratio: number
  ratioSpread: [number, number]
}
interface DeviceResult {
  rawMs: number
  agentMs: number
  ratio: number
  rawSpreadMs: [number, number]
  agentSpreadMs: [number, number]
  n: number
  skipped?: string
}

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    json: { type: 'string' },
    chart: { type: 'string' },
    markdown: { type: 'string' },
  },
  strict: true,
})
const dir = values.dir ?? '.state/bench'
const read = <T>(name: string): T => JSON.parse(readFileSync(`${dir}/${name}`, 'utf8')) as T
const sign = read<{
  rows: SignRow[]
  shimOverNode: number
  ratioRounds: { agentVsRequired: number[]; agentVsDevice: number[]; shimVsNode: number[] }
  syncCallsMs: { signInit: number; tokenInfo: number }
}>('sign.json')
const load = read<{ rows: LoadRow[]; sweep: SweepRow[]; ceiling: Ceiling }>('load.json')
const loop = read<{ loopP99Ms: number; loopP99MsPerRound: number[]; loopMaxMsPerRound: number[] }>(
  'loop.json',
)
const rss = read<{
  requests: number
  perSecond: number
  seconds: number
  freshRssMb: number
  samples: { requests: number; rssMb: number }[]
  rssLastVsFirst: number
  verified: number
}>('rss.json')
const publish = read<{ rounds: number; verify: PublishMode; noVerify: PublishMode }>('publish.json')
const devices = read<Record<'tpm' | 'yubikey', DeviceResult>>('devices.json')

const ms = (variant: string): number => (sign.rows.find((r) => r.variant === variant) as SignRow).medianMs
const phase = (name: string): LoadRow => load.rows.find((r) => r.phase === name) as LoadRow
const agent64 = phase('agent')
const device64 = phase('device')
const range = (xs: readonly number[], digits = 2): string =>
  xs.length === 0 ? '–' : `${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}`
const roundRatios = agent64.perRound.map((a, i) => a / (device64.perRound[i] as number))
const rss1k = rss.samples.find((x) => x.requests === 1_000)?.rssMb ?? Number.NaN
const rssLast = rss.samples.at(-1)
const device = (name: 'tpm' | 'yubikey'): DeviceResult | undefined =>
  devices[name]?.skipped === undefined ? devices[name] : undefined

const ratios: Record<string, number> = {
  agent_vs_required_work: ms('agent') / ms('required'),
  agent_vs_device: ms('agent') / ms('device'),
  shim_vs_node: sign.shimOverNode,
  throughput64_vs_raw: agent64.perSecond / device64.perSecond,
  refused64: agent64.refusedShare,
  loop_p99_ms: loop.loopP99Ms,
  rss_100k_vs_1k: rss.rssLastVsFirst,
  publish_vs_token: publish.verify.ratio,
}
const tpm = device('tpm')
const yubikey = device('yubikey')
if (tpm !== undefined) ratios['tpm_vs_raw'] = tpm.ratio
if (yubikey !== undefined) ratios['yubikey_vs_raw'] = yubikey.ratio

// figure, measured, detail, spread, goal
type Row = [string, string, string, string, string]
const x = (v: number): string => `${v.toFixed(2)}×`
const rows: Row[] = [
  [
    'one sign ÷ required work (device sign + SHA-384 + low-S + verify, inline)',
    x(ratios['agent_vs_required_work'] as number),
    `${ms('agent').toFixed(2)} ms vs ${ms('required').toFixed(2)} ms (audit fdatasync alone ${ms('fsync').toFixed(2)} ms)`,
    range(sign.ratioRounds.agentVsRequired),
    '≤ 1.2×',
  ],
  [
    'one sign ÷ device alone (C_SignInit + C_Sign)',
    x(ratios['agent_vs_device'] as number),
    `${ms('agent').toFixed(2)} ms vs ${ms('device').toFixed(2)} ms; Signer seam ${ms('signer').toFixed(2)} ms, token ${ms('token').toFixed(2)} ms; on the event loop C_SignInit ${(sign.syncCallsMs.signInit * 1000).toFixed(0)} µs, C_GetTokenInfo ${(sign.syncCallsMs.tokenInfo * 1000).toFixed(0)} µs`,
    range(sign.ratioRounds.agentVsDevice),
    'report',
  ],
  [
    'shim start + one request through the agent ÷ node -e 0',
    x(sign.shimOverNode),
    `${ms('shim').toFixed(1)} ms vs ${ms('spawn').toFixed(1)} ms`,
    range(sign.ratioRounds.shimVsNode),
    '≤ 1.15×',
  ],
  [
    'throughput, 64 clients ÷ raw SoftHSM (16 sessions)',
    x(ratios['throughput64_vs_raw'] as number),
    `${agent64.perSecond.toFixed(0)}/s vs ${device64.perSecond.toFixed(0)}/s; p50 ${agent64.p50Ms.toFixed(0)} ms, p99 ${agent64.p99Ms.toFixed(0)} ms`,
    range(roundRatios),
    '≥ 0.85×',
  ],
  [
    `ceiling on ${load.ceiling.cores} cores: sign CPU ÷ (sign + verify CPU)`,
    x(load.ceiling.throughputCeilingVsRaw),
    `raw sign ${load.ceiling.deviceCpuMsPerSign.toFixed(2)} ms CPU, verify ${load.ceiling.verifyCpuMsPerOp.toFixed(2)} ms; agent ${load.ceiling.agentCpuMsPerRequest.toFixed(2)} ms CPU per request (event loop ${load.ceiling.agentMainThreadCpuMsPerRequest.toFixed(2)} ms) → ${x(load.ceiling.agentCpuBoundVsRaw)}`,
    '–',
    'report',
  ],
  [
    'load generator CPU (its own process), 64 clients',
    `${agent64.generatorCores.toFixed(2)} cores`,
    'taken from the agent on this 2-core machine',
    '–',
    'report',
  ],
  [
    'refused at 64 clients',
    `${(agent64.refusedShare * 100).toFixed(2)} %`,
    'AGENT_BUSY and any other error',
    '–',
    '0',
  ],
  [
    'event-loop p99 − 1 ms resolution, 8 touches waiting',
    `${loop.loopP99Ms.toFixed(2)} ms`,
    `max ${loop.loopMaxMsPerRound.join(' / ')} ms`,
    range(loop.loopP99MsPerRound),
    '< 10 ms',
  ],
  [
    `agent RSS after ${rssLast?.requests ?? '?'} ÷ after 1,000 requests`,
    x(rss.rssLastVsFirst),
    `${rssLast?.rssMb.toFixed(1) ?? '?'} MB vs ${rss1k.toFixed(1)} MB (fresh ${rss.freshRssMb.toFixed(1)} MB; ${rss.samples.map((s) => `${s.requests / 1000}k ${s.rssMb.toFixed(0)}`).join(', ')} MB); ${rss.perSecond.toFixed(0)}/s over ${rss.seconds.toFixed(0)} s`,
    '–',
    '≤ 1.1×',
  ],
  [
    '`cargo publish` with the agent ÷ with `cargo:token`',
    x(publish.verify.ratio),
    `${publish.verify.agentMs.toFixed(0)} ms vs ${publish.verify.tokenMs.toFixed(0)} ms (median of ${publish.rounds})`,
    range(publish.verify.ratioSpread),
    '≤ 1.3×',
  ],
  [
    '`cargo publish --no-verify` with the agent ÷ with `cargo:token`',
    x(publish.noVerify.ratio),
    `${publish.noVerify.agentMs.toFixed(0)} ms vs ${publish.noVerify.tokenMs.toFixed(0)} ms (no build: the worst case)`,
    range(publish.noVerify.ratioSpread),
    'report',
  ],
  ...(
    [
      ['tpm2-pkcs11 on swtpm: one sign ÷ raw module', tpm],
      ['ykcs11 on the virtual YubiKey (9A, no touch): one sign ÷ raw module', yubikey],
    ] as const
  ).map(([name, r]): Row =>
    r === undefined
      ? [name, 'skipped', 'not installed', '–', 'report']
      : [
          name,
          x(r.ratio),
          `${r.agentMs.toFixed(1)} ms vs ${r.rawMs.toFixed(1)} ms (n = ${r.n} each)`,
          `raw ${range(r.rawSpreadMs, 1)} ms, agent ${range(r.agentSpreadMs, 1)} ms`,
          'report',
        ],
  ),
]
const loadAverage = {
  start: process.env['BENCH_LOAD_START'] ?? 'unknown',
  end: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
}
const widths = [0, 1, 2, 3, 4].map((i) => Math.max(...rows.map((r) => r[i]?.length ?? 0)))
process.stdout.write('\nissue 13 figures (this run)\n')
for (const r of rows) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i] as number)).join('  ')}\n`)
process.stdout.write(`load average at start ${loadAverage.start}, at the end ${loadAverage.end}\n`)
if (values.json !== undefined)
  writeFileSync(
    values.json,
    JSON.stringify({ ratios, rows, loadAverage, ceiling: load.ceiling, sweep: load.sweep }, null, 2) + '\n',
  )
if (values.markdown !== undefined) {
  // Into BENCHMARKS.md between its markers (the prose around it is written by hand), or a file of its own.
  const cell = (t: string): string => t.replace(/\|/g, '\\|')
  const table =
    ['| figure | measured | detail | spread over rounds | goal |', '|---|---|---|---|---|']
      .concat(rows.map((r) => `| ${r.map(cell).join(' | ')} |`))
      .join('\n') +
    `\n\nLoad average (1, 5, 15 min) at the start of the run ${loadAverage.start}, at its end ${loadAverage.end}.\n`
  const begin = '<!-- bench:table -->\n'
  const end = '<!-- /bench:table -->'
  const old = existsSync(values.markdown) ? readFileSync(values.markdown, 'utf8') : ''
  const from = old.indexOf(begin)
  const to = old.indexOf(end)
  writeFileSync(
    values.markdown,
    from >= 0 && to > from ? old.slice(0, from + begin.length) + table + old.slice(to) : table,
  )
}

if (values.chart !== undefined && load.sweep.length > 0) {
  writeFileSync(values.chart, chart(load.sweep))
  try {
    execFileSync('rsvg-convert', ['-o', values.chart.replace(/\.svg$/, '.png'), values.chart])
  } catch {
    process.stdout.write('(rsvg-convert not installed: SVG only)\n')
  }
}

/** Two panels, throughput and p99, against clients on a log axis; device vs agent. */
function chart(sweep: readonly SweepRow[]): string {
  const W = 360
  const H = 240
  const pad = { l: 56, r: 16, t: 28, b: 40 }
  const clients = [...new Set(sweep.map((r) => r.clients))].sort((a, b) => a - b)
  const x = (n: number): number =>
    pad.l +
    ((Math.log2(n) - Math.log2(clients[0] as number)) /
      Math.max(1, Math.log2(clients.at(-1) as number) - Math.log2(clients[0] as number))) *
      (W - pad.l - pad.r)
  const colour = { device: '#1f77b4', agent: '#d62728' } as const
  const panel = (dx: number, title: string, key: 'perSecond' | 'p99Ms', unit: string): string => {
    const top = Math.max(...sweep.map((r) => r[key])) * 1.1
    const y = (v: number): number => H - pad.b - (v / top) * (H - pad.t - pad.b)
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * top)
    const lines = (['device', 'agent'] as const).map((p) => {
      const pts = sweep.filter((r) => r.phase === p).sort((a, b) => a.clients - b.clients)
      const d = pts.map((r, i) => `${i === 0 ? 'M' : 'L'}${x(r.clients).toFixed(1)},${y(r[key]).toFixed(1)}`)
      const dots = pts.map(
        (r) =>
          `<circle cx="${x(r.clients).toFixed(1)}" cy="${y(r[key]).toFixed(1)}" r="3" fill="${colour[p]}"/>`,
      )
      return `<path d="${d.join(' ')}" fill="none" stroke="${colour[p]}" stroke-width="2"/>${dots.join('')}`
    })
    return `<g transform="translate(${dx},0)">
<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${title}</text>
<line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" stroke="#333"/>
<line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${H - pad.b}" stroke="#333"/>
${ticks.map((t) => `<text x="${pad.l - 6}" y="${y(t) + 4}" text-anchor="end" font-size="10">${t.toFixed(0)}</text><line x1="${pad.l}" y1="${y(t)}" x2="${W - pad.r}" y2="${y(t)}" stroke="#ddd"/>`).join('\n')}
${clients.map((n) => `<text x="${x(n)}" y="${H - pad.b + 14}" text-anchor="middle" font-size="10">${n}</text>`).join('\n')}
<text x="${(pad.l + W - pad.r) / 2}" y="${H - 8}" text-anchor="middle" font-size="11">concurrent clients</text>
<text x="14" y="${(pad.t + H - pad.b) / 2}" font-size="11" transform="rotate(-90 14 ${(pad.t + H - pad.b) / 2})" text-anchor="middle">${unit}</text>
${lines.join('\n')}
</g>`
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${H + 24}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${panel(0, 'throughput', 'perSecond', 'signatures / s')}
${panel(W, 'p99 latency', 'p99Ms', 'ms')}
<g font-size="11"><rect x="${W - 120}" y="${H + 6}" width="12" height="4" fill="${colour.device}"/><text x="${W - 104}" y="${H + 12}">raw SoftHSM (min(N, 16) sessions)</text>
<rect x="${W + 110}" y="${H + 6}" width="12" height="4" fill="${colour.agent}"/><text x="${W + 126}" y="${H + 12}">agent (N socket clients)</text></g>
</svg>
`
}
