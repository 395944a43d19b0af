#!/usr/bin/env python3
"""Rewrites a GGUF file with llama.cpp's own Python GGUF library (gguf-py): its GGUFReader reads
the input (a file Forge wrote, ideally F32), its numpy quantizers (gguf.quants.quantize, the code
convert_hf_to_gguf.py quantizes with) re-encode every tensor, and its GGUFWriter writes the whole
new file: header, key/values, tensor infos, alignment and data. This script only drives them, so
the output is a GGUF "written by llama.cpp's tools" for Forge's interop tests
(tests/formats_interop). It is not a converter of its own: no bytes are laid out here.

Which tensors stay F32 follows convert_hf_to_gguf.py (conversion/base.py, prepare_tensors):
1-D tensors, *_norm.weight, anything not named *.weight, and position/token-type embeddings and
MoE gate inputs; the rest take the requested type, falling back to F16 when a row is not a
whole number of blocks. general.file_type is set to the matching llama_ftype and
general.quantization_version to gguf-py's, as convert_hf_to_gguf.py does.

Usage:
  llamacpp_write.py --gguf-py LLAMA_CPP/gguf-py IN.gguf OUT.gguf TYPE
TYPE is F32, F16, BF16, Q8_0, Q4_0, Q4_1 (or another type gguf-py can quantize). gguf-py has no
K-quant quantizers (Q4_K, Q6_K, ...: dequantizers only); llama-quantize writes those. Needs numpy
and PyYAML (gguf-py imports it). Exit status 2 on bad arguments or a type gguf-py cannot write.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def die(msg: str) -> None:
    print(f"llamacpp_write: {msg}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf-py", default=os.environ.get("LLAMACPP_GGUF_PY"),
                    help="the gguf-py folder of a llama.cpp tree (or $LLAMACPP_GGUF_PY)")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("type")
    args = ap.parse_args()
    if not args.gguf_py or not os.path.isfile(os.path.join(args.gguf_py, "gguf", "__init__.py")):
        die(f"--gguf-py {args.gguf_py!r} is not llama.cpp's gguf-py folder")
    # llama.cpp's copy first, ahead of any pip-installed `gguf`.
    sys.path.insert(0, os.path.abspath(args.gguf_py))
    import numpy as np
    import gguf

    GT = gguf.GGMLQuantizationType
    try:
        qtype = GT[args.type.upper()]
    except KeyError:
        die(f"unknown ggml type {args.type!r}")
    # gguf.quants.quantize raises NotImplementedError for types it only dequantizes.
    probe = np.zeros((1, 256 * 8), dtype=np.float32)
    try:
        gguf.quants.quantize(probe, qtype)
    except NotImplementedError:
        die(f"gguf-py (llama.cpp's Python GGUF library) has no {qtype.name} quantizer "
            f"(it only dequantizes it); llama-quantize writes {qtype.name}")
    ftype_name = "ALL_F32" if qtype == GT.F32 else f"MOSTLY_{qtype.name}"
    if ftype_name not in gguf.LlamaFileType.__members__:
        die(f"llama.cpp has no general.file_type for {qtype.name} files")
    ftype = gguf.LlamaFileType[ftype_name]

    reader = gguf.GGUFReader(args.input)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        die(f"{args.input} has no general.architecture")
    arch = arch_field.contents()

    tmp = args.output + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)  # adds general.architecture itself

    # Every key/value with its stored type; strings as raw bytes so nothing is re-encoded.
    VT = gguf.GGUFValueType
    for field in reader.fields.values():
        key = field.name
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE:
            continue  # the header's counts (the reader's pseudo-keys); the writer's own key
        if key == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))
            continue
        vtype = field.types[0]
        if key == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(int(ftype))
        elif vtype == VT.ARRAY:
            if len(field.types) != 2:
                die(f"key {key!r}: nested arrays are not copied")
            sub = field.types[1]
            if not field.data:
                print(f"llamacpp_write: key {key!r}: an empty array, which GGUFWriter cannot "
                      "write; left out", file=sys.stderr)
                continue
            if sub == VT.STRING:
                items = [bytes(field.parts[i]) for i in field.data]
            else:
                items = field.contents()
            writer.add_key_value(key, items, vtype, sub_type=sub)
        elif vtype == VT.STRING:
            writer.add_key_value(key, bytes(field.parts[-1]), vtype)
        else:
            writer.add_key_value(key, field.contents(), vtype)
    if reader.get_field(gguf.Keys.General.FILE_TYPE) is None:
        writer.add_file_type(int(ftype))
    if reader.get_field(gguf.Keys.General.QUANTIZATION_VERSION) is None:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # convert_hf_to_gguf's always-F32 tensors that can occur in llama/gpt2-like models.
    force_f32 = []
    for t in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES,
              gguf.MODEL_TENSOR.FFN_GATE_INP):
        pattern = re.escape(gguf.TENSOR_NAMES[t]).replace(re.escape("{bid}"), r"\d+")
        force_f32.append(re.compile(pattern + r"\.weight"))

    counts: dict[str, int] = {}
    for t in reader.tensors:
        name = t.name
        if t.tensor_type == GT.F32:
            data = np.array(t.data, dtype=np.float32)  # shape: ne reversed (row-major)
        else:
            # Not exact for the byte comparison Forge's tests make, but keeps the tool general.
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        n_dims = len(t.shape)
        if (n_dims <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
                or any(p.fullmatch(name) for p in force_f32)):
            want = GT.F32
        else:
            want = qtype
        try:
            out = gguf.quants.quantize(data, want)
        except gguf.QuantError as e:  # a row that is not a whole number of blocks
            print(f"llamacpp_write: {name}: {e}, falling back to F16", file=sys.stderr)
            want = GT.F16
            out = gguf.quants.quantize(data, want)
        writer.add_tensor(name, out, raw_dtype=want)
        counts[want.name] = counts.get(want.name, 0) + 1

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, args.output)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"llamacpp_write: {args.output}: {len(reader.tensors)} tensors ({summary}), "
          f"general.file_type {int(ftype)} ({ftype.name})")


if __name__ == "__main__":
    main()
