// Drives `forge serve` with the official openai npm client, as a user's app would:
//   node client_test.mjs <forge binary> <model folder>
// Starts two servers on free loopback ports (one with a tight rate limit for the 429 checks),
// then checks every route through the client, an abort mid-stream freeing its slot, typed
// errors, the client's retry on 429, a 64-stream load test, and SIGTERM draining a stream.
// Exit 0: all passed; 1: a check failed (its message says which).
import { spawn, execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import OpenAI from "openai";

const [forge, modelDir] = process.argv.slice(2);
if (!forge || !modelDir) {
    console.error("usage: node client_test.mjs <forge binary> <model folder>");
    process.exit(2);
}
const KEY = "sk-client-test";
const MODEL = "tiny-test";

function startServer(extra) {
    const proc = spawn(forge, ["serve", "--model", modelDir, "--name", MODEL, "--port", "0",
                               "--api-key", KEY, "--slots", "4", "--quiet", ...extra],
                       { stdio: ["ignore", "pipe", "inherit"] });
    return new Promise((resolve, reject) => {
        let out = "";
        proc.on("exit", (code) => reject(new Error(`forge serve exited early (${code}): ${out}`)));
        proc.stdout.on("data", (d) => {
            out += d;
            const url = /listening on (http:\/\/\S+)/.exec(out);
            if (url && out.includes("ready")) {
                proc.removeAllListeners("exit");
                resolve({ proc, url: url[1] });
            }
        });
    });
}

async function metric(url, name) {
    const text = await (await fetch(`${url}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{}"));
    return line ? Number(line.split(" ").pop()) : NaN;
}

// Polls until the engine reports no busy slot and an empty queue (bounded: 60 s).
async function expectIdle(url, what) {
    for (let i = 0; i < 600; ++i) {
        if ((await metric(url, "forge_engine_slots_busy")) === 0 &&
            (await metric(url, "forge_engine_queue_depth")) === 0)
            return;
        await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what}: slots still busy after 60 s (a leaked slot)`);
}

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

const main = await startServer([]);
// Burst 2, one token every 3 s: the bucket cannot refill between spending it and the retry
// check, even on a slow machine.
const limited = await startServer(["--rate-limit", "20/min"]);
const client = new OpenAI({ baseURL: `${main.url}/v1`, apiKey: KEY, maxRetries: 0 });

check("models.list", async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.deepEqual(ids, [MODEL]);
    assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
});

check("completions equal forge generate's greedy tokens", async () => {
    const prompt = "the quick brown";
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(r.object, "text_completion");
    assert.equal(r.usage.completion_tokens, 12);
    // The oracle: Generator through `forge generate --ids`, detokenized by the server.
    const ids = JSON.parse(execFileSync(forge, ["generate", "--model", modelDir, "--prompt", prompt,
                                                "--max-tokens", "12", "--temperature", "0", "--ids",
                                                "--quiet"]).toString());
    const text = await (await fetch(`${main.url}/detokenize`, {
        method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ tokens: ids }) })).json();
    assert.equal(r.choices[0].text, text.prompt);
});

const chatReq = { model: MODEL, messages: [{ role: "system", content: "Be brief." },
                                           { role: "user", content: "the lazy dog" }],
                  max_tokens: 16, temperature: 0 };
let chatText;
check("chat non-streaming", async () => {
    const r = await client.chat.completions.create(chatReq);
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    chatText = r.choices[0].message.content;
});

check("chat streaming with include_usage equals non-streaming", async () => {
    const stream = await client.chat.completions.create({ ...chatReq, stream: true,
                                                          stream_options: { include_usage: true } });
    let text = "", usage = null, finish = null;
    for await (const chunk of stream) {
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
            text += c.delta.content ?? "";
            finish = c.finish_reason ?? finish;
        }
    }
    assert.equal(text, chatText);
    assert.ok(finish);
    assert.ok(usage && usage.completion_tokens > 0, "the last chunk carries usage");
});

check("abort mid-stream frees the slot", async () => {
    const ctrl = new AbortController();
    const stream = await client.completions.create(
        { model: MODEL, prompt: "the", max_tokens: 200, stream: true }, { signal: ctrl.signal });
    let n = 0;
    try {
        for await (const _ of stream) if (++n === 2) ctrl.abort();
    } catch (e) {
        assert.ok(e.name === "AbortError" || e instanceof OpenAI.APIUserAbortError, String(e));
    }
    await expectIdle(main.url, "after an abort");
});

check("embeddings, default base64 and float", async () => {
    const b = await client.embeddings.create({ model: MODEL, input: ["hello", "world"] });
    assert.equal(b.data.length, 2);
    const e = b.data[0].embedding;
    assert.ok(Array.isArray(e) && e.length > 0, "the client decodes base64 to numbers");
    const norm = Math.sqrt(e.reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-4, `unit length, got ${norm}`);
    const f = await client.embeddings.create({ model: MODEL, input: "hello", encoding_format: "float" });
    f.data[0].embedding.forEach((x, i) => assert.ok(Math.abs(x - e[i]) < 1e-6));
});

check("errors surface as the client's typed errors", async () => {
    const bad = new OpenAI({ baseURL: `${main.url}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
    await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
    await assert.rejects(client.chat.completions.create({ ...chatReq, temperature: 5 }),
                         (e) => e instanceof OpenAI.BadRequestError && e.param === "temperature");
    await assert.rejects(client.completions.create({ model: "nope", prompt: "x" }),
                         OpenAI.NotFoundError);
    await assert.rejects(client.completions.create({ model: MODEL, prompt: "x".repeat(5000) }),
                         (e) => e instanceof OpenAI.BadRequestError && e.code === "context_length_exceeded");
});

check("429 is retried after retry-after", async () => {
    const statuses = [];
    const counting = (url, init) => fetch(url, init).then((r) => (statuses.push(r.status), r));
    const noRetry = new OpenAI({ baseURL: `${limited.url}/v1`, apiKey: KEY, maxRetries: 0, fetch: counting });
    // Spend the bucket, then the next call is a typed 429.
    let limitedError = null;
    for (let i = 0; i < 20 && !limitedError; ++i)
        await noRetry.models.list().catch((e) => { limitedError = e; });
    assert.ok(limitedError instanceof OpenAI.RateLimitError, String(limitedError));
    statuses.length = 0;
    const retrying = new OpenAI({ baseURL: `${limited.url}/v1`, apiKey: KEY, maxRetries: 5, fetch: counting });
    const page = await retrying.models.list();
    assert.equal(page.data[0].id, MODEL);
    assert.equal(statuses[0], 429, `first attempt limited, got ${statuses}`);
    assert.equal(statuses.at(-1), 200);
    assert.ok((await metric(limited.url, "forge_rate_limited_total")) >= 2, "rejections are counted");
});

check("64 concurrent streams: none lost, no slot leaked", async () => {
    const one = async (i) => {
        const stream = await client.completions.create(
            { model: MODEL, prompt: `the ${i}`, max_tokens: 24, stream: true, seed: i,
              stream_options: { include_usage: true } });
        let usage = null, finish = null;
        for await (const chunk of stream) {
            usage = chunk.usage ?? usage;
            for (const c of chunk.choices) finish = c.finish_reason ?? finish;
        }
        assert.ok(finish, `stream ${i} ended without a finish_reason`);
        assert.ok(usage, `stream ${i} ended without usage`);
        return usage.completion_tokens;
    };
    const tokens = await Promise.all(Array.from({ length: 64 }, (_, i) => one(i)));
    assert.equal(tokens.length, 64);
    tokens.forEach((t) => assert.ok(t >= 1 && t <= 24));
    await expectIdle(main.url, "after the load test");
});

check("SIGTERM drains an in-flight stream, then exits 0", async () => {
    const stream = await client.completions.create(
        { model: MODEL, prompt: "the", max_tokens: 100, stream: true, stream_options: { include_usage: true } });
    const exited = new Promise((r) => main.proc.on("exit", (code, sig) => r({ code, sig })));
    let n = 0, usage = null;
    for await (const chunk of stream) {
        if (n++ === 0) main.proc.kill("SIGTERM");
        usage = chunk.usage ?? usage;
    }
    assert.ok(usage, "the stream finished despite SIGTERM");
    assert.deepEqual(await exited, { code: 0, sig: null });
});

let failed = 0;
for (const { name, fn } of checks) {
    try {
        await fn();
        console.log(`ok   ${name}`);
    } catch (e) {
        ++failed;
        console.log(`FAIL ${name}\n     ${e.stack ?? e}`);
    }
}
main.proc.kill("SIGTERM");
limited.proc.kill("SIGTERM");
console.log(failed ? `${failed} of ${checks.length} checks failed` : `all ${checks.length} checks passed`);
process.exit(failed ? 1 : 0);
