// Without a stack: the status -> error mapping, Struct conversion and the proto contract.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import {
  AuthenticationError,
  DEFAULT_PROTOS,
  DeadlineExceededError,
  HarnessClient,
  HarnessError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  UnavailableError,
  fromStruct,
  loadRouter,
  toHarnessError,
  toStruct,
} from "../src/index.js";

function grpcError(code, details, trailers = {}) {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(trailers)) metadata.set(k, v);
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
}

test("each status the router sends becomes its typed error, with the server's message", () => {
  const cases = [
    [grpc.status.UNAUTHENTICATED, AuthenticationError],
    [grpc.status.PERMISSION_DENIED, PermissionDeniedError],
    [grpc.status.NOT_FOUND, NotFoundError],
    [grpc.status.INVALID_ARGUMENT, InvalidArgumentError],
    [grpc.status.UNAVAILABLE, UnavailableError],
    [grpc.status.DEADLINE_EXCEEDED, DeadlineExceededError],
  ];
  for (const [code, ErrorClass] of cases) {
    const err = toHarnessError(grpcError(code, "what to fix"));
    assert.ok(err instanceof ErrorClass && err instanceof HarnessError, `${grpc.status[code]} -> ${err.name}`);
    assert.equal(err.name, ErrorClass.name);
    assert.equal(err.message, "what to fix");
    assert.equal(err.code, code);
    assert.equal(err.codeName, grpc.status[code]);
  }
  const internal = toHarnessError(grpcError(grpc.status.INTERNAL, "boom"));
  assert.equal(internal.constructor, HarnessError);
  assert.equal(internal.retryable, false);
});

test("a rate limit carries the router's retry-after-ms hint", () => {
  const err = toHarnessError(grpcError(grpc.status.RESOURCE_EXHAUSTED, "over 60 rpm", { "retry-after-ms": "1500" }));
  assert.ok(err instanceof RateLimitError);
  assert.equal(err.retryAfterMs, 1500);
  assert.equal(err.retryable, true);
  const noHint = toHarnessError(grpcError(grpc.status.RESOURCE_EXHAUSTED, "budget"));
  assert.equal(noHint.retryAfterMs, undefined);
});

test("errors that are not gRPC statuses pass through unchanged", () => {
  const plain = new TypeError("not a status");
  assert.equal(toHarnessError(plain), plain);
});

test("tool arguments round-trip through google.protobuf.Struct", () => {
  const args = { ledger: "FY2024", amount: -12.5, tags: ["a", 1, false, null], nested: { deep: { ok: true } } };
  const struct = toStruct(args);
  assert.deepEqual(struct.fields.amount, { numberValue: -12.5 });
  // Through the wire format and back, decoded as the client decodes it.
  const { requestSerialize, requestDeserialize } = loadRouter().service.InvokeTool;
  const decoded = requestDeserialize(requestSerialize({ tool: "ledger", action: "read", arguments: struct }));
  assert.deepEqual(fromStruct(decoded.arguments), args);
  assert.throws(() => toStruct({ x: Number.NaN }), /finite/);
  assert.throws(() => toStruct({ f: () => 1 }), /cannot send a function/);
});

test("the Router contract loads from the repository's protos", () => {
  assert.match(DEFAULT_PROTOS, /protos$/);
  const router = loadRouter();
  for (const method of ["Generate", "Complete", "InvokeTool", "Embed"]) assert.ok(router.service[method], method);
  assert.equal(router.service.Generate.responseStream, true);
});

test("a client needs an address and the agent's certificate", () => {
  assert.throws(() => new HarnessClient({}), /address/);
  assert.throws(() => new HarnessClient({ address: "127.0.0.1:1", ca: Buffer.from("x") }), /key is required/);
});
