// Makes tests/tokenizers/chat_fixtures/: renders real chat templates (templates.json: the
// `chat_template` of each model's tokenizer_config.json) with @huggingface/jinja, the Jinja
// implementation transformers.js uses, for a set of conversations, and writes what it printed
// (or the message of raise_exception) so Forge's C++ test can compare byte for byte.
//
//   npm install && node make_fixtures.mjs [--templates templates.json] [--only name,name]
//
// Cases where @huggingface/jinja itself fails (not via raise_exception) are left out and listed.
// templates.json holds each model's `chat_template`, `bos_token` and `eos_token` as published in
// its tokenizer_config.json on the Hugging Face Hub (copied from the collection in openvino.genai's
// tests/python_tests/data/tokenizer_configs.py); the same script renders that whole collection
// (166 templates) when given it with --templates.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Template } from "@huggingface/jinja";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const templates = JSON.parse(fs.readFileSync(path.resolve(here, opt("--templates", "templates.json")), "utf8"));
const only = opt("--only", "") ? new Set(opt("--only", "").split(",")) : null;
const outDir = path.resolve(opt("--out", path.join(repo, "tests/tokenizers/chat_fixtures")));
fs.mkdirSync(outDir, { recursive: true });

const turns = [
    { role: "user", content: "Hello, how are you?" },
    { role: "assistant", content: "I'm doing great. How can I help you today?" },
    { role: "user", content: "I'd like to show off how chat templating works!" },
];
const system = { role: "system", content: "You are a friendly chatbot who always responds in the style of a pirate" };
const tools = [{
    type: "function",
    function: {
        name: "get_current_weather",
        description: "Get the current weather in a given location",
        parameters: {
            type: "object",
            properties: {
                location: { type: "string", description: "The city and state, e.g. San Francisco, CA" },
                unit: { type: "string", enum: ["celsius", "fahrenheit"] },
            },
            required: ["location"],
        },
    },
}];
const conversations = {
    basic: turns,
    system: [system, ...turns],
    single: [{ role: "user", content: "What is 2 + 2?" }],
    spaces: [
        { role: "user", content: "  Hello\n" },
        { role: "assistant", content: "   I am an assistant   " },
        { role: "user", content: "\tAnother question\n\n" },
    ],
    unicode: [
        { role: "system", content: "Réponds en français. 日本語も OK 👍" },
        { role: "user", content: "Ça va? \"quotes\" and 'apostrophes' \\ backslash" },
    ],
    tools: {
        messages: [
            { role: "user", content: "What's the weather like in Oslo?" },
            { role: "assistant", content: "", tool_calls: [{ id: "call_1", type: "function",
              function: { name: "get_current_weather", arguments: { location: "Oslo, Norway", unit: "celsius" } } }] },
            { role: "tool", tool_call_id: "call_1", name: "get_current_weather", content: "{\"temperature\": 7}" },
        ],
        tools,
    },
    // OpenAI's wire format: arguments as a JSON string
    tools_string_args: {
        messages: [
            { role: "user", content: "What's the weather like in Oslo?" },
            { role: "assistant", content: "", tool_calls: [{ id: "call_1", type: "function",
              function: { name: "get_current_weather", arguments: "{\"location\": \"Oslo, Norway\"}" } }] },
            { role: "tool", tool_call_id: "call_1", name: "get_current_weather", content: "{\"temperature\": 7}" },
        ],
        tools,
    },
};
// Variables some templates read instead of the clock (Llama 3.x) or as switches.
const extra = { date_string: "26 Jul 2024" };

// An error whose message is written in the template came from its raise_exception(msg);
// anything else is @huggingface/jinja's own failure.
const raised = (e, template) => typeof e.message === "string" && e.message.length > 0 &&
                                template.includes(e.message);

// The clock strftime_now reads, frozen for the whole run and written into each fixture as local
// "YYYY-MM-DD HH:MM:SS" (the test hands it to the renderer): a fixture does not expire at midnight.
const RealDate = Date;
const frozen = new RealDate();
globalThis.Date = class extends RealDate {
    constructor(...a) {
        super(...(a.length ? a : [frozen.getTime()]));
    }
};
const pad = (n) => String(n).padStart(2, "0");
const now = `${frozen.getFullYear()}-${pad(frozen.getMonth() + 1)}-${pad(frozen.getDate())} ` +
            `${pad(frozen.getHours())}:${pad(frozen.getMinutes())}:${pad(frozen.getSeconds())}`;

const skipped = [];
let written = 0;
for (const t of templates) {
    if (only && !only.has(t.name))
        continue;
    let tmpl;
    try {
        tmpl = new Template(t.template);
    } catch (e) {
        skipped.push(`${t.name}: @huggingface/jinja cannot parse it (${e.message})`);
        continue;
    }
    const cases = [];
    for (const [conv, spec] of Object.entries(conversations)) {
        const messages = Array.isArray(spec) ? spec : spec.messages;
        for (const agp of [false, true]) {
            const data = { messages, add_generation_prompt: agp, bos_token: t.bos_token,
                           eos_token: t.eos_token, ...extra };
            if (!Array.isArray(spec))
                data.tools = spec.tools;
            const c = { conversation: conv, messages: JSON.stringify(messages), add_generation_prompt: agp,
                        tools: spec.tools ? JSON.stringify(spec.tools) : "", extra: JSON.stringify(extra) };
            try {
                c.expected = tmpl.render(structuredClone(data));
            } catch (e) {
                if (!raised(e, t.template)) {
                    skipped.push(`${t.name} / ${conv} / agp=${agp}: ${e.message}`);
                    continue;
                }
                c.error = e.message;
            }
            // Where @huggingface/jinja departs from Python's Jinja2 (which transformers runs), the
            // case is left out: it prints a dict added to a string as "[object Map]" (Python
            // raises TypeError), and its strip/lstrip/rstrip ignore a `chars` argument.
            if (c.expected !== undefined && c.expected.includes("[object ")) {
                skipped.push(`${t.name} / ${conv} / agp=${agp}: oracle printed "[object Map]"`);
                continue;
            }
            if (conv === "spaces" && /strip\(\s*['"]/.test(t.template)) {
                skipped.push(`${t.name} / ${conv} / agp=${agp}: oracle ignores strip(chars)`);
                continue;
            }
            cases.push(c);
        }
    }
    const fixture = { name: t.name, model: t.model, bos_token: t.bos_token, eos_token: t.eos_token,
                      template: t.template, now, cases };
    fs.writeFileSync(path.join(outDir, t.name + ".json"), JSON.stringify(fixture) + "\n");
    ++written;
}
console.log(`wrote ${written} fixture files to ${path.relative(repo, outDir)}`);
for (const s of skipped)
    console.log(`skipped ${s}`);
