#!/usr/bin/env node
// Upload one file to a tus server with tus-js-client (Node), for tether's e2e tests.
//
// usage: node upload.mjs ENDPOINT FILE CHUNK_SIZE [options]
//   CHUNK_SIZE               bytes per PATCH, or "inf" for one request for the whole file
//   --abort-after-bytes N    abort (without terminating) once N bytes were sent, then resume
//                            with a fresh tus.Upload and finish
//   --abort-when sent|accepted
//                            sent (default): abort as soon as N bytes went out, in the middle
//                            of a PATCH; accepted: abort between PATCHes, once the server has
//                            acknowledged N bytes (no request is in flight at the abort)
//   --resume-via previous|url
//                            how the fresh Upload finds the upload: findPreviousUploads() +
//                            resumeFromPreviousUpload() on a file URL storage (default), or
//                            the stored upload URL passed as the `uploadUrl` option
//   --parallel N             parallelUploads: N partial uploads, then a final concatenation
//   --source file|buffer|stream
//                            what is handed to tus-js-client: an fs.ReadStream (default), a
//                            Buffer, or a plain Readable (needs chunkSize and uploadSize)
//   --meta KEY=VALUE         upload metadata (repeatable)
//   --retry-delays MS,MS,... tus-js-client's retryDelays (default: none, every error fails)
//
// On success prints one JSON line to stdout (aborted_at: bytes sent, at least, when it aborted;
// resumed_from: the Upload-Offset of each HEAD the fresh Upload sent):
//   {"url": ..., "bytes": ..., "aborted_at": ..., "resumed_from": ..., "requests": [...]}
// and exits 0. On any error prints the error to stderr and exits 1.

import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { PassThrough } from 'node:stream'

import * as tus from 'tus-js-client'

function fail(message) {
  process.stderr.write(`upload.mjs: ${message}\n`)
  process.exit(1)
}

function parseArgs(argv) {
  const positional = []
  const opts = {
    abortAfter: null,
    resumeVia: 'previous',
    parallel: 1,
    source: 'file',
    metadata: {},
    retryDelays: null,
    abortWhen: 'sent',
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`)
      return argv[++i]
    }
    if (arg === '--abort-after-bytes') opts.abortAfter = Number(value())
    else if (arg === '--resume-via') opts.resumeVia = value()
    else if (arg === '--parallel') opts.parallel = Number(value())
    else if (arg === '--source') opts.source = value()
    else if (arg === '--abort-when') opts.abortWhen = value()
    else if (arg === '--retry-delays') opts.retryDelays = value().split(',').map(Number)
    else if (arg === '--meta') {
      const pair = value()
      const eq = pair.indexOf('=')
      if (eq < 1) fail(`--meta wants KEY=VALUE, got ${pair}`)
      opts.metadata[pair.slice(0, eq)] = pair.slice(eq + 1)
    } else if (arg.startsWith('--')) fail(`unknown option ${arg}`)
    else positional.push(arg)
  }
  if (positional.length !== 3) fail('usage: upload.mjs ENDPOINT FILE CHUNK_SIZE [options]')
  const [endpoint, file, rawChunk] = positional
  const chunkSize = rawChunk === 'inf' ? Number.POSITIVE_INFINITY : Number(rawChunk)
  if (!(chunkSize > 0)) fail(`bad chunk size ${rawChunk}`)
  if (opts.abortAfter !== null && !(opts.abortAfter > 0)) fail('bad --abort-after-bytes')
  if (!(Number.isInteger(opts.parallel) && opts.parallel >= 1)) fail('bad --parallel')
  if (!['file', 'buffer', 'stream'].includes(opts.source)) fail(`bad --source ${opts.source}`)
  if (!['sent', 'accepted'].includes(opts.abortWhen)) fail(`bad --abort-when ${opts.abortWhen}`)
  if (!['previous', 'url'].includes(opts.resumeVia)) fail(`bad --resume-via ${opts.resumeVia}`)
  if (opts.retryDelays !== null && !opts.retryDelays.every((ms) => ms >= 0)) {
    fail('bad --retry-delays')
  }
  if (opts.source === 'stream') {
    if (!Number.isFinite(chunkSize)) fail('a stream source needs a finite chunk size')
    if (opts.abortAfter !== null) fail('a plain stream cannot be re-read to resume')
    if (opts.parallel > 1) fail('parallelUploads cannot slice a plain stream')
  }
  if (opts.parallel > 1 && opts.abortWhen === 'accepted') {
    fail('--abort-when accepted counts one upload; with --parallel use sent')
  }
  if (opts.parallel > 1 && opts.abortAfter !== null && opts.resumeVia === 'url') {
    fail('tus-js-client resumes a parallel upload only from its URL storage')
  }
  return { endpoint, file, chunkSize, ...opts }
}

const args = parseArgs(process.argv.slice(2))
const size = fs.statSync(args.file).size
const requests = []

function openInput() {
  if (args.source === 'buffer') return fs.readFileSync(args.file)
  if (args.source === 'stream') {
    // A plain Readable without a path: tus-js-client must buffer it chunk by chunk.
    return fs.createReadStream(args.file).pipe(new PassThrough())
  }
  return fs.createReadStream(args.file)
}

function baseOptions(urlStorage) {
  const options = {
    endpoint: args.endpoint,
    chunkSize: args.chunkSize,
    metadata: args.metadata,
    // By default no retries: an error the server returns must fail the run, not be retried.
    retryDelays: args.retryDelays,
    parallelUploads: args.parallel,
    storeFingerprintForResuming: urlStorage !== null,
    removeFingerprintOnSuccess: true,
    onAfterResponse(req, res) {
      requests.push({
        method: req.getMethod(),
        url: req.getURL(),
        status: res.getStatus(),
        upload_offset: req.getHeader('Upload-Offset') ?? null,
        upload_concat: req.getHeader('Upload-Concat') ?? null,
        response_offset: res.getHeader('Upload-Offset') ?? null,
        location: res.getHeader('Location') ?? null,
      })
    },
  }
  if (urlStorage !== null) options.urlStorage = urlStorage
  if (args.source === 'stream') options.uploadSize = size
  return options
}

// Phase 1: upload until ABORT_AFTER bytes were sent, then abort without terminating.
function uploadUntilAbort(urlStorage) {
  return new Promise((resolve, reject) => {
    let aborted = false
    let watcher = null
    const unwatch = () => {
      if (watcher !== null) clearInterval(watcher)
      watcher = null
    }
    const stop = (sent) => {
      if (aborted) return
      aborted = true
      unwatch()
      upload.abort(false).then(() => resolve({ upload, sent }), reject)
    }
    const options = baseOptions(urlStorage)
    const upload = new tus.Upload(openInput(), {
      ...options,
      onBeforeRequest(req) {
        // onProgress fires at most once per 100 ms, so one fast PATCH could finish before it
        // reports the threshold: also watch the socket of each PATCH (parallel uploads have
        // many short PATCHes, and onProgress fires at the start of each).
        if (args.abortWhen !== 'sent' || args.parallel > 1 || req.getMethod() !== 'PATCH') return
        const base = Number(req.getHeader('Upload-Offset'))
        let socket = null
        let before = 0
        unwatch()
        watcher = setInterval(() => {
          const current = req.getUnderlyingObject()?.socket
          if (!current) return
          if (current !== socket) {
            // A kept-alive socket counts earlier requests' bytes too.
            socket = current
            before = current.bytesWritten
          }
          const sent = base + current.bytesWritten - before
          if (sent >= args.abortAfter) stop(sent)
        }, 1)
      },
      onProgress(bytesSent) {
        if (args.abortWhen === 'sent' && bytesSent >= args.abortAfter) stop(bytesSent)
      },
      onChunkComplete(_chunkSize, bytesAccepted) {
        // Runs before the next PATCH starts, which then sees the abort and does not start.
        if (args.abortWhen === 'accepted' && bytesAccepted >= args.abortAfter) stop(bytesAccepted)
      },
      onSuccess() {
        unwatch()
        if (!aborted) reject(new Error(`finished before ${args.abortAfter} bytes were sent`))
      },
      onError(err) {
        unwatch()
        reject(err)
      },
    })
    upload.start()
  })
}

function uploadToEnd(options, prepare) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(openInput(), {
      ...options,
      onSuccess() {
        resolve(upload)
      },
      onError: reject,
    })
    Promise.resolve(prepare ? prepare(upload) : null).then(() => upload.start(), reject)
  })
}

async function main() {
  const result = { url: null, bytes: size, aborted_at: null, resumed_from: null, requests }
  if (args.abortAfter === null) {
    const upload = await uploadToEnd(baseOptions(null))
    result.url = upload.url
    return result
  }

  const storageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-tus-js-'))
  try {
    const urlStorage =
      args.resumeVia === 'previous'
        ? new tus.FileUrlStorage(path.join(storageDir, 'urls.json'))
        : null
    const first = await uploadUntilAbort(urlStorage)
    result.aborted_at = first.sent
    const firstRequestCount = requests.length

    let options = baseOptions(urlStorage)
    let prepare = null
    if (args.resumeVia === 'url') {
      if (!first.upload.url) throw new Error('aborted before the upload had a URL')
      options = { ...options, uploadUrl: first.upload.url }
    } else {
      prepare = async (upload) => {
        const previous = await upload.findPreviousUploads()
        if (previous.length !== 1) {
          throw new Error(`findPreviousUploads found ${previous.length} uploads, wanted 1`)
        }
        upload.resumeFromPreviousUpload(previous[0])
      }
    }
    const second = await uploadToEnd(options, prepare)
    result.url = second.url
    // Where the server told the fresh Upload to continue (its first HEAD answers).
    const heads = requests.slice(firstRequestCount).filter((r) => r.method === 'HEAD')
    result.resumed_from = heads.map((r) => Number(r.response_offset))
    return result
  } finally {
    fs.rmSync(storageDir, { recursive: true, force: true })
  }
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`)
    process.exit(0)
  },
  (err) => {
    fail(err && err.stack ? err.stack : String(err))
  },
)
