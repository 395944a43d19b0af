// Internal to src/serve: OpenAI request bodies parsed and validated into generation jobs. Every
// check throws HttpError 400 naming the field (param), as OpenAI's API does.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <forge/serve/http.h>
#include <forge/serve/openai.h>

namespace forge::serve::openai {

/// A parsed /v1/completions or /v1/chat/completions request.
struct GenRequest {
    std::string model;
    /// Completions: one per prompt (choices are prompt-major: index = prompt * n + j).
    /// Chat: the rendered conversation.
    std::vector<std::vector<TokenId>> prompts;
    GenerateOptions opts;
    int n = 1;
    bool stream = false;
    bool include_usage = false;
    /// -1: none; else the engine's top_logprobs (completions: the integer `logprobs`).
    int top_logprobs = -1;
    /// Completions only: prepend the prompt to each choice's text.
    bool echo = false;

    /// The engine jobs: n per prompt, seeds seed + i so the choices differ but repeat.
    std::vector<EngineJob> jobs() const;
};

/// 400 "Unrecognized request argument supplied: X" for a member not in `known`.
void check_fields(const JsonView& body, std::initializer_list<std::string_view> known);
/// The "model" field (required string).
std::string model_field(const JsonView& body);
/// An integer field in [lo, hi]; `fallback` when absent or null.
int64_t int_field(const JsonView& body, std::string_view name, int64_t lo, int64_t hi,
                  int64_t fallback);
/// A number field in [lo, hi]; `fallback` when absent or null.
double num_field(const JsonView& body, std::string_view name, double lo, double hi,
                 double fallback);
bool bool_field(const JsonView& body, std::string_view name, bool fallback);
/// 400 with param and message.
[[noreturn]] void bad_request(std::string_view param, const std::string& message,
                              std::string_view code = {});

/// Token ids of an `input`/`prompt` value: a string, an array of strings, an array of ids or an
/// array of id arrays. Each item must be non-empty and its ids inside the vocabulary.
std::vector<std::vector<TokenId>> token_inputs(const JsonView& v, std::string_view param,
                                               const ServedModel& m, bool add_special);

GenRequest parse_completion(const JsonView& body, const ServedModel& m);
GenRequest parse_chat(const JsonView& body, const ServedModel& m);

} // namespace forge::serve::openai
