// tiktoken rank files (`base64(token bytes) rank` per line) and the known OpenAI encodings:
// their regexes and special tokens. Encoding follows tiktoken: a piece that is a token is
// emitted as is, others merge by the rank of the concatenation.
#include <array>
#include <filesystem>

#include "bpe.h"
#include "impl.h"
#include "pre_tokenizers.h"
#include <forge/core/error.h>

namespace forge::tok {

namespace {

constexpr const char* kCl100kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string canonical_encoding(std::string_view name) {
    if (name == "gpt2" || name == "r50k_base")
        return "r50k_base";
    if (name == "p50k_base" || name == "cl100k_base" || name == "o200k_base")
        return std::string(name);
    return {};
}

bool base64_decode(std::string_view in, std::string& out) {
    static const auto table = [] {
        std::array<int, 256> t{};
        t.fill(-1);
        const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; ++i)
            t[static_cast<unsigned char>(a[i])] = i;
        return t;
    }();
    out.clear();
    int val = 0, bits = -8;
    for (unsigned char c : in) {
        if (c == '=')
            break;
        if (table[c] < 0)
            return false;
        val = (val << 6) + table[c];
        bits += 6;
        if (bits >= 0) {
            out.push_back(char((val >> bits) & 0xFF));
            bits -= 8;
        }
    }
    return true;
}

} // namespace

std::shared_ptr<Tokenizer::Impl> make_rank_bpe(std::vector<std::string> tokens, std::string pattern,
                                               std::vector<SpecialToken> specials,
                                               std::string name, std::string_view origin) {
    Vocab vocab;
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (!tokens[i].empty())
            vocab.set(TokenId(i), tokens[i]);
    vocab.finish();
    for (int b = 0; b < 256; ++b) {
        char c = char(b);
        if (vocab.find(std::string_view(&c, 1)) < 0)
            throw InvalidArgument(detail::str_cat("[tokenizer] ", origin, ": byte 0x", std::hex, b,
                                                  " has no token; a byte-level BPE needs all 256"));
    }
    BpeConfig cfg;
    cfg.byte_level = true;
    cfg.ignore_merges = true;
    auto model = std::make_unique<BpeModel>(std::move(vocab), cfg);
    model->add_rank_merges();
    model->finish();
    auto impl = std::make_shared<PipelineImpl>();
    impl->kind = "tiktoken:" + name;
    impl->pre_tokenizer = make_regex_pieces(pattern, origin);
    impl->split_pattern = pattern;
    std::size_t n = model->vocab().size();
    impl->model = std::move(model);
    impl->concat_decode = true;
    for (auto& s : specials) {
        FORGE_CHECK(s.id >= 0, "[tokenizer] ", origin, ": special token \"", s.text, "\" has id ", s.id);
        FORGE_CHECK(!impl->model->vocab().has(s.id), "[tokenizer] ", origin, ": special token \"", s.text,
                    "\" has id ", s.id, ", which is an ordinary token");
        impl->added.push_back({s.text, s.id, s.special, false, false, false});
        if (s.text == "<|endoftext|>")
            impl->eos = s.id;
        if (s.text == "<|begin_of_text|>" || s.text == "<|startoftext|>")
            impl->bos = s.id;
    }
    if (impl->eos && !impl->bos && (name == "r50k_base" || name == "p50k_base" || name == "gpt2"))
        impl->bos = impl->eos; // GPT-2 uses <|endoftext|> for both
    impl->finish_specials(n);
    return impl;
}

std::shared_ptr<Tokenizer::Impl> load_tiktoken(const std::string& path, std::string pattern,
                                               std::vector<SpecialToken> specials,
                                               std::string name) {
    std::string text = read_file(path);
    std::vector<std::string> tokens;
    std::size_t line_no = 0, pos = 0;
    std::string bytes;
    while (pos < text.size()) {
        std::size_t eol = text.find('\n', pos);
        if (eol == std::string::npos)
            eol = text.size();
        std::string_view line(text.data() + pos, eol - pos);
        pos = eol + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (line.empty())
            continue;
        std::size_t sp = line.find(' ');
        if (sp == std::string_view::npos || !base64_decode(line.substr(0, sp), bytes) || bytes.empty())
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path, ":", line_no,
                                                  ": expected \"<base64 token> <rank>\""));
        std::string_view num = line.substr(sp + 1);
        std::size_t rank = 0;
        if (num.empty() || num.size() > 9)
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path, ":", line_no, ": bad rank"));
        for (char c : num) {
            if (c < '0' || c > '9')
                throw InvalidArgument(detail::str_cat("[tokenizer] ", path, ":", line_no, ": bad rank"));
            rank = rank * 10 + std::size_t(c - '0');
        }
        if (rank >= tokens.size())
            tokens.resize(rank + 1);
        tokens[rank] = bytes;
    }
    if (tokens.empty())
        throw InvalidArgument(detail::str_cat("[tokenizer] ", path, ": no tokens in the file"));
    if (pattern.empty()) {
        std::string stem = std::filesystem::path(path).stem().string();
        std::string enc = canonical_encoding(stem);
        if (enc.empty()) {
            // Tell the encoding from its size.
            switch (tokens.size()) {
            case 50256: enc = "r50k_base"; break;
            case 50281: enc = "p50k_base"; break; // ranks 0..50280, 50256 left for <|endoftext|>
            case 100256: enc = "cl100k_base"; break;
            case 199998: enc = "o200k_base"; break;
            default:
                throw InvalidArgument(
                    detail::str_cat("[tokenizer] ", path, ": cannot tell which encoding this is (",
                                    tokens.size(), " ranks), so its regex is unknown"),
                    "name the file r50k_base/p50k_base/cl100k_base/o200k_base.tiktoken, or use "
                    "Tokenizer::from_tiktoken_file with a pattern");
            }
        }
        pattern = Tokenizer::known_pattern(enc);
        specials = Tokenizer::known_special_tokens(enc);
        name = enc;
    }
    if (name.empty())
        name = std::filesystem::path(path).stem().string();
    return make_rank_bpe(std::move(tokens), std::move(pattern), std::move(specials), name, path);
}

} // namespace forge::tok

namespace forge {

std::string Tokenizer::known_pattern(std::string_view encoding) {
    std::string enc = tok::canonical_encoding(encoding);
    if (enc == "r50k_base" || enc == "p50k_base")
        return tok::kGpt2Pattern;
    if (enc == "cl100k_base")
        return tok::kCl100kPattern;
    if (enc == "o200k_base")
        return tok::kO200kPattern;
    throw InvalidArgument(detail::str_cat("[tokenizer] unknown encoding \"", encoding,
                                          "\" (known: r50k_base, gpt2, p50k_base, cl100k_base, o200k_base)"));
}

std::vector<SpecialToken> Tokenizer::known_special_tokens(std::string_view encoding) {
    std::string enc = tok::canonical_encoding(encoding);
    if (enc == "r50k_base" || enc == "p50k_base")
        return {{"<|endoftext|>", 50256, true}};
    if (enc == "cl100k_base")
        return {{"<|endoftext|>", 100257, true},
                {"<|fim_prefix|>", 100258, true},
                {"<|fim_middle|>", 100259, true},
                {"<|fim_suffix|>", 100260, true},
                {"<|endofprompt|>", 100276, true}};
    if (enc == "o200k_base")
        return {{"<|endoftext|>", 199999, true}, {"<|endofprompt|>", 200018, true}};
    throw InvalidArgument(detail::str_cat("[tokenizer] unknown encoding \"", encoding,
                                          "\" (known: r50k_base, gpt2, p50k_base, cl100k_base, o200k_base)"));
}

} // namespace forge
