// `forge tokenize` and `forge detokenize`: text <-> token ids on stdin/stdout, for scripts and
// pipelines. A stable contract (docs/tokenizers.md): no BOS/EOS is added, ids are one JSON array.
#include <charconv>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "command.h"
#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::cli {

namespace {

std::string read_stdin() {
    std::string data;
    char buf[1 << 16];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0)
        data.append(buf, n);
    return data;
}

void append_ids(std::string& out, const std::vector<TokenId>& ids) {
    out += '[';
    char num[16];
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i)
            out += ',';
        auto r = std::to_chars(num, num + sizeof(num), ids[i]);
        out.append(num, r.ptr);
    }
    out += ']';
}

void write_out(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::vector<TokenId> parse_ids(const std::string& text, const std::string& where) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_array())
        throw InvalidArgument(where + ": expected a JSON array of token ids",
                              "e.g. echo '[9906, 1917]' | forge detokenize --tokenizer cl100k_base.tiktoken");
    std::vector<TokenId> ids;
    ids.reserve(j.size());
    for (const auto& v : j) {
        if (!v.is_number_integer())
            throw InvalidArgument(where + ": every element must be an integer token id");
        ids.push_back(v.get<TokenId>());
    }
    return ids;
}

// Calls f(line, line_no) for each line of stdin as it arrives (so co-processes can interleave).
template <typename F> void for_each_stdin_line(F&& f) {
    std::string line;
    std::size_t line_no = 0;
    while (std::getline(std::cin, line)) {
        ++line_no;
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos)
            continue; // blank lines carry no record
        f(line, line_no);
    }
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    struct Opts {
        std::string path;
        bool allow_special = false;
        bool jsonl = false;
    };
    auto opts = std::make_shared<Opts>();
    auto* cmd = root.add_subcommand(
        "tokenize", "Read UTF-8 text on stdin, print its token ids as one JSON array (no BOS/EOS)");
    cmd->add_option("--tokenizer,-t", opts->path,
                    "a .tiktoken file, tokenizer.json, GPT-2 folder (encoder.json + vocab.bpe), "
                    "or SentencePiece .model")
        ->required();
    cmd->add_flag("--allow-special", opts->allow_special,
                  "encode special-token text (e.g. <|endoftext|>) as the special token");
    cmd->add_flag("--jsonl", opts->jsonl,
                  "batch mode: each input line is a JSON string; print one id array per line");
    cmd->callback([opts] {
        auto tok = Tokenizer::load(opts->path);
        EncodeOptions eo;
        eo.allow_all_special = opts->allow_special;
        if (!opts->jsonl) {
            std::string out;
            append_ids(out, tok.encode(read_stdin(), eo));
            out += '\n';
            write_out(out);
            return;
        }
        std::string out;
        for_each_stdin_line([&](const std::string& line, std::size_t line_no) {
            nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded() || !j.is_string())
                throw InvalidArgument("stdin line " + std::to_string(line_no) +
                                          ": expected a JSON string (--jsonl)",
                                      "each line must look like \"some text\\n\"");
            out.clear();
            append_ids(out, tok.encode(j.get_ref<const std::string&>(), eo));
            out += '\n';
            write_out(out);
            std::fflush(stdout);
        });
    });

    auto dopts = std::make_shared<Opts>();
    auto* dec = root.add_subcommand("detokenize",
                                    "Read a JSON array of token ids on stdin, print the text");
    dec->add_option("--tokenizer,-t", dopts->path, "same kinds of PATH as tokenize")->required();
    dec->add_flag("--jsonl", dopts->jsonl,
                  "batch mode: each input line is an id array; print one JSON string per line");
    dec->callback([dopts] {
        auto tok = Tokenizer::load(dopts->path);
        if (!dopts->jsonl) {
            write_out(tok.decode(parse_ids(read_stdin(), "stdin")));
            return;
        }
        for_each_stdin_line([&](const std::string& line, std::size_t line_no) {
            std::string text = tok.decode(parse_ids(line, "stdin line " + std::to_string(line_no)));
            // Invalid UTF-8 (ids that split a character) is replaced so the line stays JSON.
            write_out(nlohmann::json(text).dump(-1, ' ', false,
                                                nlohmann::json::error_handler_t::replace) +
                      "\n");
            std::fflush(stdout);
        });
    });
});

} // namespace forge::cli
