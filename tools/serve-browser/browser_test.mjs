// Drives the chat page of a running `forge serve` in headless Chromium, as a user would:
//   node browser_test.mjs <server url> <api key>
// (run.sh starts the server.) The oracle for every reply is the server's own non-streaming
// POST /v1/chat/completions with the same messages at temperature 0; for errors, the message of
// the server's own OpenAI error object. Exit 0: all passed; 1: a check failed (it says which).
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
    console.error("usage: node browser_test.mjs <server url> <api key>");
    process.exit(2);
}
const MAX_TOKENS = 8;   // five ChatML turns of a byte model fit its context of 256
setTimeout(() => { console.error("FAIL: the browser test ran past 180 s"); process.exit(1); },
           180_000).unref();

async function api(path, body, bearer = key) {
    const res = await fetch(url + path, {
        method: body ? "POST" : "GET",
        headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
        body: body && JSON.stringify(body), signal: AbortSignal.timeout(60_000) });
    return { status: res.status, body: await res.json() };
}

// What the server says, not streamed, for this conversation at temperature 0.
async function oracle(model, messages) {
    const r = await api("/v1/chat/completions",
                        { model, messages, max_tokens: MAX_TOKENS, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.choices[0].message.content;
}

// CI runs as root in a container: no sandbox, no GPU, and /dev/shm may be tiny.
const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium", headless: true, timeout: 60_000,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"] });
let failed = false, page;
try {
    page = await browser.newPage();
    page.setDefaultTimeout(30_000);
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const errorText = () => page.locator("#error").textContent();

    // 1. The page needs no key; without one, listing models shows the server's 401 message.
    const noKey = await fetch(url + "/v1/models");
    const noKeyMessage = (await noKey.json()).error.message;
    assert.equal(noKey.status, 401);
    const res = await page.goto(url + "/");
    assert.equal(res.status(), 200);
    assert.equal(res.headers()["content-type"], "text/html; charset=utf-8");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    assert.equal(await errorText(), `Listing models failed: 401: ${noKeyMessage}`);
    console.log("ok - page served without a key; no key shows the 401 message");

    // 2. With the key, the model list is the server's.
    await page.fill("#api-key", key);
    await page.press("#api-key", "Tab");                 // `change`: reload the models
    const models = (await api("/v1/models")).body.data.map((m) => m.id);
    await page.waitForFunction((n) => document.querySelectorAll("#model option").length === n,
                               models.length);
    assert.deepEqual(await page.locator("#model option").allTextContents(), models);
    assert.equal(await errorText(), "");
    const model = models[0];
    await page.selectOption("#model", model);
    await page.check("#deterministic");
    await page.fill("#max-tokens", String(MAX_TOKENS));
    console.log(`ok - models listed: ${models.join(", ")}`);

    // Sends `text` from the page and returns the finished assistant reply, counting the times the
    // bubble changed while it streamed.
    async function say(text) {
        const n = await page.locator(".msg.assistant[data-done]").count();
        await page.fill("#prompt", text);
        await page.evaluate(() => {
            window.__updates = 0;
            window.__observer?.disconnect();
            window.__observer = new MutationObserver(() => ++window.__updates);
            window.__observer.observe(document.getElementById("log"), { childList: true, subtree: true,
                                                            characterData: true });
        });
        await page.press("#prompt", "Enter");
        const done = page.locator(".msg.assistant[data-done]").nth(n);
        await done.waitFor();
        return { reply: await done.textContent(), updates: await page.evaluate(() => window.__updates) };
    }

    // 3. A streamed reply equals the server's non-streaming one; the conversation is kept.
    const conversation = [];
    for (const text of ["the dog", "a fox"]) {
        const { reply, updates } = await say(text);
        conversation.push({ role: "user", content: text });
        const expected = await oracle(model, conversation);
        assert.ok(reply.length > 0, "the streamed reply is empty");
        assert.equal(reply, expected);
        conversation.push({ role: "assistant", content: reply });
        console.log(`ok - turn ${conversation.length / 2}: streamed ${JSON.stringify(reply)} ` +
                    `(${updates} page updates) equals the non-streaming reply`);
    }

    // 4. A wrong key: the send fails with the server's 401 message, and the failed message is
    // left out of the conversation.
    const wrong = await api("/v1/chat/completions",
                            { model, messages: [{ role: "user", content: "x" }] }, "sk-wrong");
    assert.equal(wrong.status, 401);
    await page.fill("#api-key", "sk-wrong");
    await page.press("#api-key", "Tab");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    assert.equal(await errorText(), `Listing models failed: 401: ${wrong.body.error.message}`);
    const assistants = await page.locator(".msg.assistant").count();
    await page.fill("#prompt", "the lazy");
    await page.press("#prompt", "Enter");
    await page.locator(".msg.user.failed").waitFor();
    assert.equal(await errorText(), `401: ${wrong.body.error.message}`);
    assert.equal(await page.locator(".msg.assistant").count(), assistants);
    console.log("ok - a wrong key shows the 401 message of the chat request");

    // 5. Back to the right key: the next reply continues the conversation without the failed turn.
    await page.fill("#api-key", key);
    await page.press("#api-key", "Tab");
    await page.waitForFunction(() => document.getElementById("error").textContent === "");
    const { reply } = await say("to be");
    conversation.push({ role: "user", content: "to be" });
    assert.equal(reply, await oracle(model, conversation));
    console.log("ok - after the error, the conversation goes on without the failed message");

    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
} catch (e) {
    failed = true;
    console.error("FAIL:", e.stack ?? e);
    if (page) console.error("page #error:", await page.locator("#error").textContent(),
                            "\npage #log:", await page.locator("#log").innerHTML());
} finally {
    await browser.close();
}
process.exit(failed ? 1 : 0);
