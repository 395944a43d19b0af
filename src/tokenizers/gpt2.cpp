// The original GPT-2 release files: encoder.json (byte-level alphabet token -> id) and vocab.bpe
// (merges, "#version" header), encoded the way OpenAI's encoder.py does: GPT-2's regex, then
// merges by priority.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "bpe.h"
#include "impl.h"
#include "pre_tokenizers.h"
#include "unicode.h"
#include <forge/core/error.h>

namespace forge::tok {

std::shared_ptr<Tokenizer::Impl> load_gpt2_folder(const std::string& dir) {
    namespace fs = std::filesystem;
    std::string enc_path = (fs::path(dir) / "encoder.json").string();
    std::string bpe_path = (fs::path(dir) / "vocab.bpe").string();
    nlohmann::json enc;
    try {
        enc = nlohmann::json::parse(read_file(enc_path));
    } catch (const nlohmann::json::parse_error& e) {
        throw InvalidArgument(detail::str_cat("[tokenizer] ", enc_path, ": not valid JSON: ", e.what()));
    }
    if (!enc.is_object() || enc.empty())
        throw InvalidArgument(detail::str_cat("[tokenizer] ", enc_path,
                                              ": expected an object of token -> id"));
    Vocab vocab;
    std::string bytes;
    std::optional<TokenId> eot;
    for (auto it = enc.begin(); it != enc.end(); ++it) {
        if (!it.value().is_number_integer() || it.value().get<long long>() < 0)
            throw InvalidArgument(detail::str_cat("[tokenizer] ", enc_path, ": token \"", it.key(),
                                                  "\" has no non-negative integer id"));
        TokenId id = it.value().get<TokenId>();
        if (it.key() == "<|endoftext|>") {
            eot = id;
            continue;
        }
        bytes.clear();
        if (!byte_level_to_bytes(it.key(), bytes))
            throw InvalidArgument(detail::str_cat("[tokenizer] ", enc_path, ": token \"", it.key(),
                                                  "\" is not in GPT-2's byte-level alphabet"));
        vocab.set(id, bytes);
    }
    vocab.finish();
    BpeConfig cfg;
    cfg.byte_level = true;
    auto model = std::make_unique<BpeModel>(std::move(vocab), cfg);
    std::string merges = read_file(bpe_path);
    std::size_t pos = 0, line_no = 0;
    std::uint32_t rank = 0;
    std::string a, b;
    while (pos < merges.size()) {
        std::size_t eol = merges.find('\n', pos);
        if (eol == std::string::npos)
            eol = merges.size();
        std::string_view line(merges.data() + pos, eol - pos);
        pos = eol + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (line.empty() || line.rfind("#version", 0) == 0)
            continue;
        std::size_t sp = line.find(' ');
        a.clear();
        b.clear();
        if (sp == std::string_view::npos || !byte_level_to_bytes(line.substr(0, sp), a) ||
            !byte_level_to_bytes(line.substr(sp + 1), b))
            throw InvalidArgument(detail::str_cat("[tokenizer] ", bpe_path, ":", line_no,
                                                  ": expected a merge \"<a> <b>\""));
        if (!model->add_merge(a, b, rank++))
            throw InvalidArgument(detail::str_cat("[tokenizer] ", bpe_path, ":", line_no, ": merge \"",
                                                  line, "\" uses a token missing from encoder.json"));
    }
    model->finish();
    auto impl = std::make_shared<PipelineImpl>();
    impl->kind = "gpt2";
    impl->pre_tokenizer = make_regex_pieces(kGpt2Pattern, enc_path);
    impl->split_pattern = kGpt2Pattern;
    std::size_t n = model->vocab().size();
    impl->model = std::move(model);
    impl->concat_decode = true;
    if (eot) {
        impl->added.push_back({"<|endoftext|>", *eot, true, false, false, false});
        impl->bos = impl->eos = eot;
    }
    impl->finish_specials(n);
    return impl;
}

} // namespace forge::tok
