// Against a running stack, through Envoy's mTLS front door, as the demo agent. Needs the
// variables of `.harness/env` (HARNESS_ADDR, HARNESS_CA, HARNESS_CERT, HARNESS_KEY), alice's
// token as HARNESS_TOKEN and mallory's (the demo user with no role) as HARNESS_MALLORY_TOKEN.
// tests/e2e/test_node_client.py runs it against a fresh stack; without a stack it is skipped.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  AuthenticationError,
  DeadlineExceededError,
  HarnessClient,
  HarnessError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
} from "../src/index.js";

const env = process.env;
const skip = env.HARNESS_ADDR ? false : "no stack: HARNESS_ADDR is not set (source .harness/env)";
const MAX_TOKENS = 12;
const LONG = 4000; // output tokens of a generation that outlasts the tests' patience

describe("the Router through Envoy", { skip }, () => {
  /** @type {HarnessClient} */
  let client;
  const seen = {}; // what the Python side checks in the audit log afterwards
  before(() => {
    client = HarnessClient.fromEnv(env, { deadlineMs: 30_000 });
  });
  after(() => {
    client.close();
    if (env.HARNESS_NODE_REPORT) writeFileSync(env.HARNESS_NODE_REPORT, JSON.stringify(seen));
  });

  test("streams a generation as the demo agent for alice", async () => {
    const chunks = [];
    const request = { prompt: "Summarise the ledger policy", sampling: { maxTokens: MAX_TOKENS } };
    for await (const chunk of client.generate({ ...request, sessionId: "node-session", stepId: "1" })) {
      chunks.push(chunk);
    }
    const last = chunks.at(-1);
    assert.ok(chunks.length >= 2, `a stream of deltas, got ${chunks.length} message(s)`);
    assert.ok(last.final && chunks.slice(0, -1).every((c) => !c.final));
    assert.ok(chunks.map((c) => c.textDelta).join("").trim(), "some text");
    const { summary } = last;
    assert.equal(summary.model, "llama-3-8b");
    assert.match(summary.deployment, /^llama-3-8b@sim-\d$/);
    assert.equal(summary.usage.outputTokens, MAX_TOKENS);
    assert.equal(summary.finishReason, "FINISH_REASON_LENGTH");
    assert.match(summary.traceId, /^[0-9a-f]{32}$/);
    assert.ok(summary.requestId);
    seen.generateRequestId = summary.requestId;
  });

  test("completes a generation in one answer", async () => {
    const { text, summary } = await client.complete({ prompt: "What is a ledger?", sampling: { maxTokens: 8 } });
    assert.ok(text.trim(), "some text");
    assert.equal(summary.usage.outputTokens, 8);
    assert.equal(summary.finishReason, "FINISH_REASON_LENGTH");
  });

  test("mallory, who has no role on the agent's project, is refused with PERMISSION_DENIED", async () => {
    const denied = await collectError(client.generate({ prompt: "hi" }, { token: env.HARNESS_MALLORY_TOKEN }));
    assert.ok(denied instanceof PermissionDeniedError, `got ${denied}`);
    assert.ok(denied instanceof HarnessError);
    assert.equal(denied.codeName, "PERMISSION_DENIED");
    assert.match(denied.message, /mallory/);
    assert.equal(denied.retryable, false);
  });

  test("a bad token is AuthenticationError, an unknown tool action NotFoundError, an empty prompt InvalidArgumentError", async () => {
    const unauthenticated = await collectError(client.generate({ prompt: "hi" }, { token: "not-a-jwt" }));
    assert.ok(unauthenticated instanceof AuthenticationError, `got ${unauthenticated}`);
    const unknown = await client.invokeTool({ tool: "ledger", action: "shred", arguments: {} }).catch((err) => err);
    assert.ok(unknown instanceof NotFoundError, `got ${unknown}`);
    assert.match(unknown.message, /shred/);
    const empty = await collectError(client.generate({ prompt: "" }));
    assert.ok(empty instanceof InvalidArgumentError, `got ${empty}`);
  });

  test("a deadline shorter than the generation ends it with DeadlineExceededError", async () => {
    // 4,000 tokens take seconds even on the sped-up simulator; the call may give up before or
    // after the first chunk, never with a complete answer.
    const request = { prompt: "Write the whole ledger policy", sampling: { maxTokens: LONG }, bypassCache: true };
    const started = Date.now();
    const err = await collectError(client.generate(request, { deadlineMs: 300 }));
    assert.ok(err instanceof DeadlineExceededError, `got ${err}`);
    assert.equal(err.retryable, true);
    assert.ok(Date.now() - started < 20_000, "the client gave up at its deadline, not at the server's pace");
  });

  test("leaving the stream early cancels the call", async () => {
    // The router's audit record of this request id shows how far it got (checked from Python).
    const requestId = `node-cancel-${process.pid}-${Date.now()}`;
    const request = { prompt: "Count slowly", sampling: { maxTokens: LONG }, bypassCache: true };
    let received = 0;
    for await (const chunk of client.generate(request, { deadlineMs: 60_000, headers: { "x-request-id": requestId } })) {
      assert.ok(!chunk.final, "the stream ended before it was left");
      received += chunk.textDelta ? 1 : 0;
      if (received >= 2) break;
    }
    assert.equal(received, 2);
    seen.cancelledRequestId = requestId;
  });

  test("embeds texts with the embedding model the agent pins", async () => {
    const texts = ["expense policy", "差旅报销标准"];
    const { vectors, summary } = await client.embed({ inputs: texts, model: "all-minilm-l6-v2" });
    assert.equal(vectors.length, texts.length);
    for (const vector of vectors) {
      assert.equal(vector.length, 384);
      const norm = Math.hypot(...vector);
      assert.ok(Math.abs(norm - 1) < 1e-3, `an L2-normalised vector, norm ${norm}`);
    }
    assert.notDeepEqual(vectors[0], vectors[1]);
    assert.equal(summary.model, "all-minilm-l6-v2");
    assert.ok(summary.usage.inputTokens > 0 && summary.usage.outputTokens === 0);
  });

  test("InvokeTool reads the demo ledger and the agent's policy refuses a write", async () => {
    const read = await client.invokeTool({
      tool: "ledger",
      action: "read",
      arguments: { ledger: "node-client" },
      sessionId: "node-session",
      stepId: "2",
    });
    assert.equal(read.decision, "DECISION_ALLOW");
    assert.deepEqual(read.result, { ledger: "node-client", entries: [], count: 0 });
    assert.ok(read.requestId && read.durationMs >= 0);
    seen.toolRequestId = read.requestId;
    const write = { tool: "ledger", action: "write", arguments: { ledger: "node-client", account: "1", amount: 5 } };
    const refused = await client.invokeTool(write).then(
      () => assert.fail("demo-agent may only read the ledger"),
      (err) => err,
    );
    assert.ok(refused instanceof PermissionDeniedError, `got ${refused}`);
  });
});

/** The error a stream ends with (fails the test if it ends without one). */
async function collectError(stream) {
  try {
    for await (const _ of stream) {
      // drain
    }
  } catch (err) {
    return err;
  }
  assert.fail("the call succeeded");
}
