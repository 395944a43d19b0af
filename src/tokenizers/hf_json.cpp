// HF tokenizer.json: model (BPE, WordPiece, Unigram), normalizer, pre_tokenizer, decoder,
// post_processor and added_tokens, built into a PipelineImpl. Byte-level BPE vocabularies are
// stored as raw bytes so they share the tiktoken fast paths.
#include <nlohmann/json.hpp>

#include "bpe.h"
#include "decoders.h"
#include "impl.h"
#include "json_util.h"
#include "models.h"
#include "normalizers.h"
#include "pre_tokenizers.h"
#include "unicode.h"

namespace forge::tok {

namespace {

std::unique_ptr<BpeModel> make_bpe(const nlohmann::json& m, bool byte_level, std::string_view origin) {
    const std::string where = "model (BPE)";
    const auto& v = json_at(m, "vocab", origin, where);
    if (!v.is_object())
        json_fail(origin, where, "vocab must be an object of token -> id");
    Vocab vocab;
    std::string bytes;
    for (auto it = v.begin(); it != v.end(); ++it) {
        if (!it.value().is_number_integer() || it.value().get<long long>() < 0)
            json_fail(origin, where, "vocab entry \"" + it.key() + "\" has no non-negative id");
        TokenId id = it.value().get<TokenId>();
        if (byte_level) {
            bytes.clear();
            // Tokens outside the byte alphabet (added tokens in the vocab) stay as UTF-8.
            if (!byte_level_to_bytes(it.key(), bytes))
                bytes = it.key();
            vocab.set(id, bytes);
        } else {
            vocab.set(id, it.key());
        }
    }
    vocab.finish();
    BpeConfig cfg;
    cfg.byte_level = byte_level;
    cfg.ignore_merges = json_bool_or(m, "ignore_merges", false, origin, where);
    cfg.byte_fallback = json_bool_or(m, "byte_fallback", false, origin, where);
    cfg.fuse_unk = json_bool_or(m, "fuse_unk", false, origin, where);
    cfg.continuing_subword_prefix = json_string_or(m, "continuing_subword_prefix", "", origin, where);
    cfg.end_of_word_suffix = json_string_or(m, "end_of_word_suffix", "", origin, where);
    std::string unk = json_string_or(m, "unk_token", "", origin, where);
    if (!unk.empty()) {
        TokenId id = vocab.find(unk);
        if (id < 0)
            json_fail(origin, where, "unk_token \"" + unk + "\" is not in the vocab");
        cfg.unk = id;
    }
    auto model = std::make_unique<BpeModel>(std::move(vocab), cfg);
    auto it = m.find("merges");
    if (it != m.end() && !it->is_null()) {
        if (!it->is_array())
            json_fail(origin, where, "merges must be an array");
        std::uint32_t rank = 0;
        std::string a, b;
        for (const auto& e : *it) {
            std::string sa, sb;
            if (e.is_string()) {
                const std::string& s = e.get_ref<const std::string&>();
                std::size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    json_fail(origin, where, detail::str_cat("merge #", rank, " \"", s,
                                                             "\" is not two tokens separated by a space"));
                sa = s.substr(0, sp);
                sb = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
                sa = e[0].get<std::string>();
                sb = e[1].get<std::string>();
            } else {
                json_fail(origin, where, detail::str_cat("merge #", rank, " is neither \"a b\" nor [\"a\", \"b\"]"));
            }
            a.clear();
            b.clear();
            if (byte_level) {
                if (!byte_level_to_bytes(sa, a))
                    a = sa;
                if (!byte_level_to_bytes(sb, b))
                    b = sb;
            } else {
                a = sa;
                b = sb;
            }
            if (!model->add_merge(a, b, rank))
                json_fail(origin, where, detail::str_cat("merge #", rank, " (\"", sa, "\", \"", sb,
                                                         "\") uses a token that is not in the vocab"));
            ++rank;
        }
    }
    model->finish();
    return model;
}

// ids of a post-processor's special token given by name in "special_tokens" (TemplateProcessing).
std::vector<TokenId> template_ids(const nlohmann::json& pp, const std::string& name, std::string_view origin) {
    const std::string where = "post_processor";
    const auto& st = json_at(pp, "special_tokens", origin, where);
    auto it = st.find(name);
    if (it == st.end())
        json_fail(origin, where, "template names special token \"" + name + "\" that special_tokens lacks");
    const auto& ids = json_at(*it, "ids", origin, where);
    if (!ids.is_array())
        json_fail(origin, where, "special_tokens." + name + ".ids must be an array");
    std::vector<TokenId> out;
    for (const auto& i : ids) {
        if (!i.is_number_integer())
            json_fail(origin, where, "special_tokens." + name + ".ids must hold integers");
        out.push_back(i.get<TokenId>());
    }
    return out;
}

void parse_post_processor(const nlohmann::json& pp, PostProcessor& post, std::string_view origin) {
    const std::string where = "post_processor";
    std::string type = json_type(pp, origin, where);
    if (type == "TemplateProcessing") {
        const auto& single = json_at(pp, "single", origin, where);
        if (!single.is_array())
            json_fail(origin, where, "TemplateProcessing.single must be an array");
        bool seen_seq = false;
        for (const auto& piece : single) {
            if (piece.contains("Sequence")) {
                seen_seq = true;
                continue;
            }
            if (!piece.contains("SpecialToken"))
                json_fail(origin, where, "template pieces must be Sequence or SpecialToken");
            std::string name = json_string(piece["SpecialToken"], "id", origin, where);
            auto ids = template_ids(pp, name, origin);
            auto& dst = seen_seq ? post.suffix : post.prefix;
            dst.insert(dst.end(), ids.begin(), ids.end());
        }
        return;
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
        auto tok_id = [&](const char* key) {
            const auto& v = json_at(pp, key, origin, where);
            if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
                json_fail(origin, where, std::string(key) + " must be [token, id]");
            return v[1].get<TokenId>();
        };
        post.prefix.push_back(tok_id("cls"));
        post.suffix.push_back(tok_id("sep"));
        return;
    }
    if (type == "ByteLevel")
        return;
    if (type == "Sequence") {
        const auto& arr = json_at(pp, "processors", origin, where);
        if (!arr.is_array())
            json_fail(origin, where, "Sequence.processors must be an array");
        for (const auto& p : arr)
            parse_post_processor(p, post, origin);
        return;
    }
    json_fail(origin, where, "unsupported post_processor type \"" + type + "\"");
}

std::string config_token(const nlohmann::json& cfg, const char* key) {
    auto it = cfg.find(key);
    if (it == cfg.end())
        return {};
    if (it->is_string())
        return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
    return {};
}

} // namespace

namespace {
std::shared_ptr<Tokenizer::Impl> load_hf_json_impl(std::string_view text, std::string_view origin,
                                                   std::string_view config_text);
}

std::shared_ptr<Tokenizer::Impl> load_hf_json(std::string_view text, std::string_view origin,
                                              std::string_view config_text) {
    try {
        return load_hf_json_impl(text, origin, config_text);
    } catch (const nlohmann::json::exception& e) {
        // A field of an unexpected JSON type that a check above did not name.
        throw InvalidArgument(detail::str_cat("[tokenizer] ", origin, ": unexpected contents: ", e.what()));
    }
}

namespace {

std::shared_ptr<Tokenizer::Impl> load_hf_json_impl(std::string_view text, std::string_view origin,
                                                   std::string_view config_text) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::parse_error& e) {
        throw InvalidArgument(detail::str_cat("[tokenizer] ", origin, ": not valid JSON: ", e.what()));
    }
    if (!j.is_object())
        json_fail(origin, "top level", "expected a JSON object");
    const auto& m = json_at(j, "model", origin, "top level");
    if (!m.is_object())
        json_fail(origin, "model", "expected a JSON object");
    std::string type = json_string_or(m, "type", "", origin, "model");
    if (type.empty()) { // old files leave the type out
        if (m.contains("merges"))
            type = "BPE";
        else if (m.contains("vocab") && m["vocab"].is_array())
            type = "Unigram";
        else if (m.contains("max_input_chars_per_word") || m.contains("continuing_subword_prefix"))
            type = "WordPiece";
    }
    auto null_or_absent = [&](const char* k) { return !j.contains(k) || j[k].is_null(); };
    bool byte_level = !null_or_absent("pre_tokenizer") && has_byte_level(j["pre_tokenizer"]);

    auto impl = std::make_shared<PipelineImpl>();
    impl->kind = "tokenizer.json:" + type;
    if (type == "BPE")
        impl->model = make_bpe(m, byte_level, origin);
    else if (type == "WordPiece")
        impl->model = make_wordpiece(m, origin), byte_level = false;
    else if (type == "Unigram")
        impl->model = make_unigram(m, origin), byte_level = false;
    else if (type == "WordLevel")
        json_fail(origin, "model", "model type \"WordLevel\" is not supported (BPE, WordPiece, Unigram are)");
    else
        json_fail(origin, "model", "unknown model type \"" + type + "\" (BPE, WordPiece, Unigram are supported)");

    if (!null_or_absent("normalizer"))
        impl->normalizer = make_normalizer(j["normalizer"], origin);
    if (!null_or_absent("pre_tokenizer")) {
        impl->pre_tokenizer = make_pre_tokenizer(j["pre_tokenizer"], origin);
        if (byte_level) impl->split_pattern = byte_level_split_pattern(j["pre_tokenizer"]);
    }
    if (!null_or_absent("decoder")) {
        impl->decoder = make_decoder(j["decoder"], origin, byte_level);
        impl->concat_decode = byte_level && is_byte_level_decoder(j["decoder"]);
    }
    if (!null_or_absent("post_processor"))
        parse_post_processor(j["post_processor"], impl->post, origin);

    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
        const auto& arr = j["added_tokens"];
        if (!arr.is_array())
            json_fail(origin, "added_tokens", "expected an array");
        for (const auto& a : arr) {
            AddedToken t;
            t.text = json_string(a, "content", origin, "added_tokens");
            long long id = json_int_or(a, "id", -1, origin, "added_tokens");
            if (id < 0)
                json_fail(origin, "added_tokens", "token \"" + t.text + "\" has no non-negative id");
            t.id = TokenId(id);
            t.special = json_bool_or(a, "special", false, origin, "added_tokens");
            t.lstrip = json_bool_or(a, "lstrip", false, origin, "added_tokens");
            t.rstrip = json_bool_or(a, "rstrip", false, origin, "added_tokens");
            t.single_word = json_bool_or(a, "single_word", false, origin, "added_tokens");
            impl->added.push_back(std::move(t));
        }
    }
    impl->unk = impl->model->unk_id();
    impl->finish_specials(impl->model->vocab().size());

    // BOS/EOS/PAD: tokenizer_config.json when present, else well-known names.
    auto find_added = [&](const std::string& s) -> std::optional<TokenId> {
        if (s.empty())
            return std::nullopt;
        return impl->token_to_id(s);
    };
    if (!config_text.empty()) {
        nlohmann::json cfg = nlohmann::json::parse(config_text.begin(), config_text.end(), nullptr, false);
        if (cfg.is_object()) {
            impl->bos = find_added(config_token(cfg, "bos_token"));
            impl->eos = find_added(config_token(cfg, "eos_token"));
            impl->pad = find_added(config_token(cfg, "pad_token"));
            if (auto u = find_added(config_token(cfg, "unk_token")))
                impl->unk = u;
        }
    }
    auto first_of = [&](std::initializer_list<const char*> names) -> std::optional<TokenId> {
        for (const char* n : names)
            for (const auto& a : impl->added)
                if (a.text == n)
                    return a.id;
        return std::nullopt;
    };
    if (!impl->bos)
        impl->bos = impl->post.prefix.empty() ? first_of({"<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"})
                                              : std::optional<TokenId>(impl->post.prefix.front());
    if (!impl->eos)
        impl->eos = first_of({"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "[SEP]", "<eos>"});
    if (!impl->pad)
        impl->pad = first_of({"<pad>", "[PAD]", "<|padding|>", "<|pad|>"});
    return impl;
}

} // namespace

} // namespace forge::tok
