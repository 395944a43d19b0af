// Greedy decoding in llama.cpp (node-llama-cpp's prebuilt CPU binary): the oracle Forge's GGUF
// files are checked against. Usage:
//   node greedy.mjs MODEL.gguf N_TOKENS (--ids 1,2,3 | --text "prompt")
// prints {"prompt": [ids], "tokens": [ids]} as one JSON line. One thread: the prebuilt binary
// can collapse at 2 threads on a busy 2-core machine, and one thread is deterministic.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, nArg, mode, value] = process.argv.slice(2);
const n = Number(nArg);
if (!modelPath || !(n > 0) || !["--ids", "--text"].includes(mode) || value === undefined) {
    console.error("usage: node greedy.mjs MODEL.gguf N_TOKENS (--ids 1,2,3 | --text PROMPT)");
    process.exit(2);
}
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const prompt = mode === "--ids" ? value.split(",").map(Number) : Array.from(model.tokenize(value));
const context = await model.createContext({contextSize: Math.max(64, prompt.length + n + 8),
                                           threads: 1, batchSize: 64, sequences: 1});
const seq = context.getSequence();
const tokens = [];
for await (const t of seq.evaluate(prompt, {temperature: 0})) {
    tokens.push(Number(t));
    if (tokens.length >= n) break;
}
console.log(JSON.stringify({prompt, tokens}));
await context.dispose();
await model.dispose();
await llama.dispose();
