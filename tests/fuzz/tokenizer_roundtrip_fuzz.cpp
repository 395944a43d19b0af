// libFuzzer: decode(encode(x)) == x for ANY bytes x on byte-level vocabularies (invalid UTF-8
// included: Forge's policy encodes each invalid byte as its byte token), with and without special
// tokens allowed, and the streaming decoder's output is valid UTF-8 that equals the input when the
// input is valid UTF-8. The first input byte picks the tokenizer.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

namespace {

std::vector<forge::Tokenizer> make_tokenizers() {
    std::vector<forge::Tokenizer> out;
    auto dir = std::filesystem::path(FORGE_SOURCE_DIR) / ".." / "shared" / "data" / "tokenizers";
    for (const char* v : {"r50k_base.tiktoken", "cl100k_base.tiktoken", "o200k_base.tiktoken",
                          "gpt2/tokenizer.json"})
        if (std::filesystem::exists(dir / v))
            out.push_back(forge::Tokenizer::load(dir / v));
    // Always one in-process vocabulary, so the target works without ../shared.
    std::vector<std::string> toks;
    for (int b = 0; b < 256; ++b)
        toks.push_back(std::string(1, char(b)));
    for (const char* t : {"th", "the", " the", "in", "ing", "aa", "aaaa", "\xC3\xA9", "  "})
        toks.push_back(t);
    out.push_back(forge::Tokenizer::from_ranks(toks, forge::Tokenizer::known_pattern("cl100k_base"),
                                               {{"<|endoftext|>", 1000, true}}, "fuzz"));
    return out;
}

bool valid_utf8(const std::string& s) {
    // Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), written
    // independently of the library's own check.
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
        if (n == 0 || i + n > s.size())
            return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
                return false;
        auto c1 = static_cast<unsigned char>(s[i + 1 < s.size() ? i + 1 : i]);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 >= 0x90))
            return false;
        i += n;
    }
    return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::vector<forge::Tokenizer> toks = make_tokenizers();
    if (size == 0)
        return 0;
    const forge::Tokenizer& tok = toks[data[0] % toks.size()];
    std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
    forge::EncodeOptions opts;
    opts.allow_all_special = (data[0] & 0x80) != 0;
    auto ids = tok.encode(text, opts);
    if (tok.decode(ids) != text)
        std::abort(); // round trip broken
    auto stream = tok.incremental_decoder();
    std::string joined;
    for (auto id : ids) {
        std::string part = stream.push(id);
        if (!valid_utf8(part))
            std::abort(); // half a character emitted
        joined += part;
    }
    joined += stream.flush();
    if (!valid_utf8(joined))
        std::abort();
    if (valid_utf8(text) && joined != text)
        std::abort();
    return 0;
}
