// Vocab, the shared parts of Tokenizer::Impl, and PipelineImpl: normalizer -> pre-tokenizer ->
// model, and decoders back (impl.h).
#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "impl.h"
#include "unicode.h"
#include <forge/core/error.h>

namespace forge::tok {

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f)
        throw NotFound(detail::str_cat("[tokenizer] cannot open ", path));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void Vocab::set(TokenId id, std::string_view surface) {
    FORGE_ASSERT(id >= 0);
    pending_.emplace_back(id, std::string(surface));
}

void Vocab::finish() {
    TokenId max_id = -1;
    for (const auto& [id, s] : pending_)
        max_id = std::max(max_id, id);
    std::size_t n = std::size_t(max_id + 1);
    std::vector<const std::string*> by_id(n, nullptr);
    for (const auto& [id, s] : pending_)
        by_id[std::size_t(id)] = &s; // a later set() of the same id wins
    std::size_t total = 0;
    for (const auto* s : by_id)
        total += s ? s->size() : 0;
    data_.clear();
    data_.reserve(total);
    offsets_.assign(n + 1, 0);
    present_.assign(n, false);
    for (std::size_t i = 0; i < n; ++i) {
        offsets_[i] = std::uint32_t(data_.size());
        if (by_id[i]) {
            data_ += *by_id[i];
            present_[i] = true;
        }
    }
    offsets_[n] = std::uint32_t(data_.size());
    map_.reserve(n);
    // Insert in reverse so that, for duplicate surfaces, the lowest id wins.
    for (std::size_t i = n; i-- > 0;)
        if (present_[i])
            map_.insert(surface(TokenId(i)), TokenId(i));
    pending_.clear();
    pending_.shrink_to_fit();
}

} // namespace forge::tok

namespace forge {

std::string_view Tokenizer::Impl::token_bytes(TokenId id) const {
    throw InvalidArgument(detail::str_cat("[tokenizer] ", kind, ": token ", id,
                                          " has no byte form (the tokenizer is not byte-level)"));
}

bool Tokenizer::Impl::is_special_id(TokenId id) const {
    for (const auto& s : specials)
        if (s.id == id)
            return s.special;
    return false;
}

void Tokenizer::Impl::finish_specials(std::size_t model_size) {
    specials.clear();
    for (const auto& a : added)
        specials.push_back({a.text, a.id, a.special});
    std::sort(specials.begin(), specials.end(),
              [](const SpecialToken& a, const SpecialToken& b) { return a.id < b.id; });
    n_vocab = model_size;
    for (const auto& s : specials)
        n_vocab = std::max(n_vocab, std::size_t(s.id) + 1);
    // Longer tokens first, so the matcher prefers the longest at one position.
    std::stable_sort(added.begin(), added.end(),
                     [](const tok::AddedToken& a, const tok::AddedToken& b) {
                         return a.text.size() > b.text.size();
                     });
}

} // namespace forge

namespace forge::tok {

const SpecialToken* PipelineImpl::special_for(TokenId id) const {
    // specials is sorted by id
    auto it = std::lower_bound(specials.begin(), specials.end(), id,
                               [](const SpecialToken& s, TokenId v) { return s.id < v; });
    return it != specials.end() && it->id == id ? &*it : nullptr;
}

void PipelineImpl::encode_valid(std::string_view text, std::vector<TokenId>& out,
                                bool at_start) const {
    std::string normalized;
    if (normalizer) {
        normalized = normalizer->normalize(text);
        text = normalized;
    }
    if (text.empty())
        return;
    if (!pre_tokenizer) {
        model->encode_piece(text, out);
        return;
    }
    thread_local std::vector<std::string_view> views;
    if (pre_tokenizer->split_views(text, views)) {
        for (auto v : views)
            model->encode_piece(v, out);
        return;
    }
    Pieces in, res;
    in.views.push_back(text);
    in.text_start = at_start ? text.data() : nullptr;
    pre_tokenizer->split(in, res);
    for (auto v : res.views)
        model->encode_piece(v, out);
}

void PipelineImpl::encode_ordinary(std::string_view text, std::vector<TokenId>& out,
                                   bool at_start) const {
    if (text.empty())
        return;
    if (!model->byte_level()) {
        if (utf8_valid(text))
            encode_valid(text, out, at_start);
        else
            encode_valid(utf8_replace_invalid(text), out, at_start);
        return;
    }
    // Byte-level: valid runs go through the pipeline; each invalid byte is its own piece.
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t v = utf8_valid_prefix(text.substr(i));
        if (v > 0)
            encode_valid(text.substr(i, v), out, at_start && i == 0);
        i += v;
        if (i < text.size()) {
            model->encode_piece(text.substr(i, 1), out);
            ++i;
        }
    }
}

const PipelineImpl::DecodeTable& PipelineImpl::decode_table() const {
    std::call_once(decode_once_, [&] {
        DecodeTable& t = decode_table_;
        const Vocab& v = model->vocab();
        t.entry.assign(n_vocab, 0);
        t.len.assign(n_vocab, 0);
        t.bytes.reserve(v.data().size() + 256);
        for (std::size_t id = 0; id < n_vocab; ++id) {
            std::string_view s;
            std::uint64_t flags = 0;
            if (const SpecialToken* sp = special_for(TokenId(id))) {
                s = sp->text;
                flags = 1 | (sp->special ? 2 : 0);
            } else if (v.has(TokenId(id))) {
                s = v.surface(TokenId(id));
                flags = 1;
            } else {
                continue;
            }
            t.entry[id] = (std::uint64_t(t.bytes.size()) << 8) | flags;
            t.len[id] = std::uint32_t(s.size());
            t.bytes.append(s);
        }
    });
    return decode_table_;
}

std::string_view PipelineImpl::token_bytes(TokenId id) const {
    if (const SpecialToken* s = special_for(id))
        return s->text;
    const Vocab& v = model->vocab();
    if (!v.has(id))
        throw InvalidArgument(detail::str_cat("[tokenizer] ", kind, ": token id ", id,
                                              " is outside the vocabulary (size ", n_vocab, ")"));
    return v.surface(id);
}

void PipelineImpl::decode_append(std::span<const TokenId> ids, bool skip_special,
                                 std::string& out) const {
    const Vocab& v = model->vocab();
    if (concat_decode) {
        const DecodeTable& t = decode_table();
        const std::size_t n = t.entry.size();
        const char* bytes = t.bytes.data();
        const std::uint64_t* entry = t.entry.data();
        const std::uint32_t* len = t.len.data();
        std::size_t start = out.size();
        out.resize(start + ids.size() * 8);
        char* w = out.data() + start;
        char* end = out.data() + out.size();
        for (TokenId id : ids) {
            std::uint64_t e = std::size_t(id) < n ? entry[id] : 0;
            if (!(e & 1))
                throw InvalidArgument(detail::str_cat("[tokenizer] ", kind, ": token id ", id,
                                                      " is outside the vocabulary (size ", n_vocab, ")"));
            if ((e & 2) && skip_special)
                continue;
            std::size_t l = len[id];
            if (std::size_t(end - w) < l) { // grow the output buffer
                std::size_t used = std::size_t(w - out.data());
                out.resize(std::max(out.size() * 2, used + l + 64));
                w = out.data() + used;
                end = out.data() + out.size();
            }
            std::memcpy(w, bytes + (e >> 8), l);
            w += l;
        }
        out.resize(std::size_t(w - out.data()));
        return;
    }
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (TokenId id : ids) {
        if (const SpecialToken* s = special_for(id)) {
            if (!(skip_special && s->special))
                toks.push_back(s->text);
            continue;
        }
        if (!v.has(id))
            throw InvalidArgument(detail::str_cat("[tokenizer] ", kind, ": token id ", id,
                                                  " is outside the vocabulary (size ", n_vocab, ")"));
        toks.emplace_back(v.surface(id));
    }
    if (decoder) {
        decoder->decode_chain(toks);
        for (const auto& t : toks)
            out += t;
    } else {
        // HF without a decoder joins tokens with spaces.
        for (std::size_t i = 0; i < toks.size(); ++i) {
            if (i)
                out += ' ';
            out += toks[i];
        }
    }
}

std::string PipelineImpl::token(TokenId id) const {
    if (const SpecialToken* s = special_for(id))
        return s->text;
    const Vocab& v = model->vocab();
    if (!v.has(id))
        throw InvalidArgument(detail::str_cat("[tokenizer] ", kind, ": token id ", id,
                                              " is outside the vocabulary (size ", n_vocab, ")"));
    return std::string(v.surface(id));
}

std::optional<TokenId> PipelineImpl::token_to_id(std::string_view s) const {
    for (const auto& a : added)
        if (a.text == s)
            return a.id;
    TokenId id = model->vocab().find(s);
    if (id >= 0)
        return id;
    return std::nullopt;
}

} // namespace forge::tok
