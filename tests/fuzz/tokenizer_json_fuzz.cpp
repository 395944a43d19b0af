// libFuzzer: any bytes as a tokenizer.json either load or throw forge::Error (InvalidArgument) --
// never crash, hang or throw anything else; a file that loads encodes and decodes a few texts
// (errors for bad ids/texts must again be forge::Error).
#include <cstdint>
#include <string>

#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string json(reinterpret_cast<const char*>(data), size);
    try {
        auto tok = forge::Tokenizer::from_tokenizer_json(json, "fuzz.json");
        forge::EncodeOptions all;
        all.allow_all_special = true;
        for (const char* text : {"", "Hello world! 123", "  caf\xC3\xA9 \xE6\x88\x91 \xF0\x9F\x91\x8B\n\t", "\xFF<s>[UNK]"}) {
            auto ids = tok.encode(text, all);
            (void)tok.decode(ids);
            auto s = tok.incremental_decoder();
            for (auto id : ids)
                (void)s.push(id);
            (void)s.flush();
        }
        (void)tok.vocab_size();
    } catch (const forge::Error&) {
        // expected for malformed or unsupported files
    }
    return 0;
}
