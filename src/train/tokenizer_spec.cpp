// Tokenizers for training runs (see tokenizer_spec.h).
#include <forge/train/tokenizer_spec.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>
#include <forge/tokenizers/bpe_trainer.h>
#include <forge/train/data.h>

namespace fs = std::filesystem;

namespace forge {

namespace {

// Next code point of UTF-8 text at i (advancing i); invalid sequences give U+FFFD for one byte.
char32_t next_code_point(std::string_view s, size_t& i) {
    auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 1) {
        ++i;
        return c;
    }
    if (len == 0 || i + size_t(len) > s.size()) {
        ++i;
        return 0xFFFD;
    }
    char32_t cp = c & (0xff >> (len + 1));
    for (int k = 1; k < len; ++k) {
        if ((b(i + k) & 0xc0) != 0x80) {
            ++i;
            return 0xFFFD;
        }
        cp = (cp << 6) | (b(i + k) & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    static constexpr char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
        ++i;
        return 0xFFFD;
    }
    i += size_t(len);
    return cp;
}

std::string utf8(char32_t cp) {
    std::string out;
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xc0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += char(0xe0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    } else {
        out += char(0xf0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3f));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    }
    return out;
}

TrainingTokenizer from_json_text(std::string json, std::string spec, std::string_view origin) {
    Tokenizer tok = Tokenizer::from_tokenizer_json(json, origin);
    uint64_t h = hash64(json);
    return {std::move(tok), std::move(spec), "tokenizer.json", std::move(json), h};
}

void write_text(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(o, "[tokenizer] cannot write ", tmp.string());
        o.write(text.data(), std::streamsize(text.size()));
        FORGE_CHECK(o, "[tokenizer] failed writing ", tmp.string());
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    FORGE_CHECK(!ec, "[tokenizer] cannot write ", path.string(), ": ", ec.message());
}

} // namespace

std::vector<std::string> distinct_chars(std::string_view text) {
    std::set<char32_t> seen;
    bool ascii[128] = {};
    for (size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x80) { // fast path: most corpora are mostly ASCII
            ascii[c] = true;
            ++i;
            continue;
        }
        seen.insert(next_code_point(text, i));
    }
    for (int c = 0; c < 128; ++c)
        if (ascii[c])
            seen.insert(char32_t(c));
    std::vector<std::string> out;
    for (char32_t cp : seen)
        out.push_back(utf8(cp));
    return out;
}

std::string char_tokenizer_json(const std::vector<std::string>& chars) {
    FORGE_CHECK(!chars.empty(), "[tokenizer] a char tokenizer needs at least one character");
    // nlohmann's object would sort keys; write the vocab in id order by hand.
    std::string vocab = "{";
    for (size_t i = 0; i < chars.size(); ++i) {
        vocab += i ? ",\n      " : "\n      ";
        vocab += nlohmann::json(chars[i]).dump() + ": " + std::to_string(i);
    }
    vocab += "\n    }";
    return "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
           "  \"added_tokens\": [],\n  \"normalizer\": null,\n  \"pre_tokenizer\": null,\n"
           "  \"post_processor\": null,\n  \"decoder\": {\"type\": \"Fuse\"},\n"
           "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n"
           "    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n"
           "    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n"
           "    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n"
           "    \"vocab\": " +
           vocab + ",\n    \"merges\": []\n  }\n}\n";
}

std::string byte_tokenizer_json() {
    TrainedBpe bytes;
    for (int b = 0; b < 256; ++b)
        bytes.tokens.push_back(std::string(1, char(b)));
    bytes.pattern = std::string(BpeTrainerOptions::kGpt2Pattern);
    return bytes.to_tokenizer_json();
}

TrainingTokenizer load_training_tokenizer(const fs::path& path, const std::string& spec) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw NotFound("[tokenizer] no such tokenizer file: " + path.string(),
                       "--tokenizer takes char, byte, bpe:N or a tokenizer file");
    fs::path file = path;
    if (fs::is_directory(path, ec)) {
        file = path / "tokenizer.json";
        FORGE_CHECK(fs::exists(file, ec), "[tokenizer] folder ", path.string(),
                    " has no tokenizer.json; pass the tokenizer file itself");
    }
    Tokenizer tok = Tokenizer::load(file);
    std::string bytes = read_file_bytes(file);
    std::string name = file.filename().string();
    if (file.extension() == ".json")
        name = "tokenizer.json";
    uint64_t h = hash64(bytes);
    return {std::move(tok), spec.empty() ? path.string() : spec, name, std::move(bytes), h};
}

TrainingTokenizer make_training_tokenizer(const std::string& spec,
                                          const std::vector<fs::path>& data_files,
                                          const fs::path& cache_dir, int n_threads) {
    if (spec == "byte")
        return from_json_text(byte_tokenizer_json(), "byte", "byte tokenizer");
    if (spec == "char") {
        // The union of the files' characters, so the vocabulary covers all the data.
        std::set<std::string> all;
        for (const auto& f : data_files)
            for (auto& c : distinct_chars(read_file_bytes(f)))
                all.insert(std::move(c));
        // std::set<std::string> orders UTF-8 bytewise, which is code point order.
        std::vector<std::string> chars(all.begin(), all.end());
        return from_json_text(char_tokenizer_json(chars), "char", "char tokenizer");
    }
    if (spec.rfind("bpe:", 0) == 0) {
        const std::string n_str = spec.substr(4);
        size_t pos = 0;
        long long n = -1;
        try {
            n = std::stoll(n_str, &pos);
        } catch (const std::exception&) {
        }
        FORGE_CHECK(pos == n_str.size() && n >= 257 && n <= (1 << 22), "[tokenizer] '", spec,
                    "': bpe:N needs a vocabulary size N between 257 and 4194304");
        // Training is the slow part: cache the result by (N, every file's path and content).
        uint64_t key = hash64(spec);
        for (const auto& f : data_files) {
            key = hash64(fs::absolute(f).lexically_normal().string(), key);
            key = hash64(read_file_bytes(f), key);
        }
        char name[64];
        std::snprintf(name, sizeof(name), "bpe-%lld-%016llx.json", n,
                      static_cast<unsigned long long>(key));
        const fs::path cached = cache_dir / name;
        std::error_code ec;
        if (fs::exists(cached, ec)) {
            try {
                return from_json_text(read_file_bytes(cached), spec, cached.string());
            } catch (const Error&) {
                // unreadable cache: train again
            }
        }
        BpeTrainerOptions opts;
        opts.vocab_size = size_t(n);
        opts.n_threads = n_threads;
        BpeTrainer trainer(opts);
        for (const auto& f : data_files)
            trainer.add_path(f);
        std::string json = trainer.train().to_tokenizer_json();
        fs::create_directories(cache_dir, ec);
        write_text(cached, json);
        return from_json_text(std::move(json), spec, "bpe tokenizer");
    }
    FORGE_CHECK(!spec.empty(), "[tokenizer] empty --tokenizer (use char, byte, bpe:N or a file)");
    std::error_code ec;
    if (!fs::exists(spec, ec))
        throw InvalidArgument("[tokenizer] unknown tokenizer '" + spec + "'",
                              "--tokenizer takes char, byte, bpe:N (e.g. bpe:4096) or the path "
                              "of a tokenizer file");
    return load_training_tokenizer(spec, spec);
}

} // namespace forge
