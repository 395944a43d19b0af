// Runs an ONNX model in onnxruntime (CPU, default optimizations) on token ids and writes the
// logits: the oracle of tests/formats/onnxruntime. Usage:
//   node run.mjs MODEL.onnx B,T,IDS.bin,OUT.bin [B,T,IDS.bin,OUT.bin ...]
// Every run goes through one session, so several shapes check that the dims are dynamic.
// IDS.bin: B*T little-endian int64 ids; OUT.bin receives the float32 logits (B, T, vocab).
// Prints one JSON line per run: the output's dims and type.
import { readFileSync, writeFileSync } from 'node:fs';
import ort from 'onnxruntime-node';

const [model, ...runs] = process.argv.slice(2);
if (!model || runs.length === 0) {
  console.error('usage: node run.mjs MODEL.onnx B,T,IDS.bin,OUT.bin [...]');
  process.exit(2);
}
const session = await ort.InferenceSession.create(model);
for (const run of runs) {
  const [b, t, idsFile, outFile] = run.split(',');
  const B = Number(b), T = Number(t);
  const raw = readFileSync(idsFile);
  if (raw.length !== B * T * 8) {
    console.error(`${idsFile}: ${raw.length} bytes, expected ${B * T * 8} for (${B}, ${T}) int64 ids`);
    process.exit(2);
  }
  const ids = new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  const out = await session.run({ input_ids: new ort.Tensor('int64', ids, [B, T]) });
  const logits = out.logits;
  writeFileSync(outFile, Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength));
  console.log(JSON.stringify({ run, dims: logits.dims, type: logits.type }));
}
