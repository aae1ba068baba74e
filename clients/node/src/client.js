// The Harness Router over gRPC: mTLS with the agent's certificate (the agent's identity), the
// end user's token as `authorization: Bearer`, a deadline on every call, typed errors.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { toHarnessError } from "./errors.js";
import { fromStruct, toStruct } from "./struct.js";

/** The repository's protos/ (this package lives in clients/node/). */
export const DEFAULT_PROTOS = resolve(dirname(fileURLToPath(import.meta.url)), "../../../protos");
const DEFAULT_DEADLINE_MS = 60_000;
const LOADER_OPTIONS = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };
const routerServices = new Map(); // protos dir -> Router service constructor

/** The Router service constructor, loaded from `protos` as this client decodes messages. */
export function loadRouter(protos = DEFAULT_PROTOS) {
  if (!routerServices.has(protos)) {
    const definition = protoLoader.loadSync("harness/router/v1/router.proto", {
      ...LOADER_OPTIONS,
      includeDirs: [protos],
    });
    routerServices.set(protos, grpc.loadPackageDefinition(definition).harness.router.v1.Router);
  }
  return routerServices.get(protos);
}

/** A PEM given as a Buffer, or as the path of a file holding it. */
function pem(value, what) {
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === "string" && value) return readFileSync(value);
  throw new TypeError(`${what} is required: a PEM Buffer or a file path`);
}

function durationMs(duration) {
  return duration ? Number(duration.seconds) * 1000 + Math.round(duration.nanos / 1e6) : 0;
}

export class HarnessClient {
  /**
   * @param {object} options
   * @param {string} options.address Envoy's front door, host:port (HARNESS_ADDR)
   * @param {Buffer|string} options.ca the Harness CA (PEM or path)
   * @param {Buffer|string} options.cert the agent's client certificate (PEM or path)
   * @param {Buffer|string} options.key the agent's private key (PEM or path)
   * @param {string} [options.token] the end user's JWT or Harness API key (hk_...)
   * @param {number} [options.deadlineMs] default deadline of every call (60 s)
   * @param {string} [options.protos] directory holding harness/router/v1/router.proto
   * @param {object} [options.channelOptions] grpc-js channel options
   */
  constructor({ address, ca, cert, key, token, deadlineMs = DEFAULT_DEADLINE_MS, protos, channelOptions } = {}) {
    if (!address) throw new TypeError("address (host:port of the Harness front door) is required");
    const credentials = grpc.credentials.createSsl(pem(ca, "ca"), pem(key, "key"), pem(cert, "cert"));
    const Router = loadRouter(protos ?? DEFAULT_PROTOS);
    this.router = new Router(address, credentials, channelOptions ?? {});
    this.token = token;
    this.deadlineMs = deadlineMs;
  }

  /** A client from the variables `source .harness/env` sets (HARNESS_ADDR, _CA, _CERT, _KEY, _TOKEN). */
  static fromEnv(env = process.env, options = {}) {
    return new HarnessClient({
      address: env.HARNESS_ADDR,
      ca: env.HARNESS_CA,
      cert: env.HARNESS_CERT,
      key: env.HARNESS_KEY,
      token: env.HARNESS_TOKEN,
      ...options,
    });
  }

  /**
   * Streams a generation: yields GenerateResponse messages ({textDelta, final, summary}); the
   * last one has `final` set and the summary (usage, cost, requestId, traceId). Leaving the loop
   * early cancels the call.
   * @param {object} request GenerateRequest fields: prompt or messages, sampling, model, sessionId, stepId
   * @param {CallOptions} [options]
   */
  async *generate(request, options = {}) {
    const call = this.router.Generate(request, this.#metadata(options), this.#callOptions(options));
    let finished = false;
    try {
      for await (const message of call) {
        yield message;
      }
      finished = true;
    } catch (err) {
      finished = true;
      throw toHarnessError(err);
    } finally {
      if (!finished) call.cancel();
    }
  }

  /** The whole generation in one answer: {text, summary}. */
  complete(request, options = {}) {
    return this.#unary("Complete", request, options);
  }

  /**
   * Calls a governed tool action: {tool, action, arguments (a JSON object), version,
   * sessionId, stepId, idempotencyKey, approvalWaitMs}. Resolves to {result (a JSON object),
   * decision, approvalId, cached, durationMs, requestId}.
   */
  async invokeTool({ arguments: args, approvalWaitMs, ...rest }, options = {}) {
    const request = { ...rest, arguments: toStruct(args ?? {}) };
    if (approvalWaitMs) {
      request.approvalWait = { seconds: Math.floor(approvalWaitMs / 1000), nanos: (approvalWaitMs % 1000) * 1e6 };
    }
    const { result, duration, ...response } = await this.#unary("InvokeTool", request, options);
    return { ...response, result: fromStruct(result), durationMs: durationMs(duration) };
  }

  /**
   * Embeds texts with an embedding model the agent pins: {inputs, model, dimensions}. Resolves
   * to {vectors (one array of numbers per input, in order), summary (usage, cost, requestId)}.
   */
  async embed(request, options = {}) {
    const { embeddings, summary } = await this.#unary("Embed", request, options);
    return { vectors: embeddings.map((e) => e.values), summary };
  }

  close() {
    this.router.close();
  }

  #unary(method, request, options) {
    return new Promise((resolvePromise, reject) => {
      this.router[method](request, this.#metadata(options), this.#callOptions(options), (err, response) =>
        err ? reject(toHarnessError(err)) : resolvePromise(response),
      );
    });
  }

  #metadata({ token = this.token, headers = {} }) {
    const metadata = new grpc.Metadata();
    if (token) metadata.set("authorization", `Bearer ${token}`);
    for (const [name, value] of Object.entries(headers)) metadata.set(name, String(value));
    return metadata;
  }

  #callOptions({ deadlineMs = this.deadlineMs }) {
    return { deadline: new Date(Date.now() + deadlineMs) };
  }
}

/**
 * @typedef {object} CallOptions
 * @property {number} [deadlineMs] this call's deadline (default: the client's)
 * @property {string} [token] another user's token for this call
 * @property {Record<string, string>} [headers] extra metadata (traceparent, x-request-id, ...)
 */
