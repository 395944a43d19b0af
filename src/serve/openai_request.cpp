// Parsing and validation of OpenAI request bodies (openai_request.h). Ranges are OpenAI's
// documented ones; a field we do not implement is a 400, never silently ignored.
#include "openai_request.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "json_node.h"
#include <forge/models/transformer.h>

namespace forge::serve::openai {

using nlohmann::json;

void bad_request(std::string_view param, const std::string& message, std::string_view code) {
    throw HttpError(400, message, "invalid_request_error", std::string(param), std::string(code));
}

void check_fields(const JsonView& body, std::initializer_list<std::string_view> known) {
    if (!body.is_object()) bad_request("", "the request body must be a JSON object");
    for (const std::string& k : body.keys())
        if (std::find(known.begin(), known.end(), k) == known.end())
            bad_request(k, "Unrecognized request argument supplied: " + k);
}

std::string model_field(const JsonView& body) {
    if (!body.contains("model")) bad_request("model", "'model' is required");
    return body["model"].str("model");
}

int64_t int_field(const JsonView& body, std::string_view name, int64_t lo, int64_t hi,
                  int64_t fallback) {
    const JsonView v = body[name];
    if (v.is_null()) return fallback;
    const int64_t x = v.integer(name);
    if (x < lo || x > hi)
        bad_request(name, detail::str_cat("'", name, "' must be in [", lo, ", ", hi, "], got ", x));
    return x;
}

double num_field(const JsonView& body, std::string_view name, double lo, double hi,
                 double fallback) {
    const JsonView v = body[name];
    if (v.is_null()) return fallback;
    const double x = v.num(name);
    if (!(x >= lo && x <= hi))
        bad_request(name, detail::str_cat("'", name, "' must be in [", lo, ", ", hi, "], got ", x));
    return x;
}

bool bool_field(const JsonView& body, std::string_view name, bool fallback) {
    const JsonView v = body[name];
    return v.is_null() ? fallback : v.boolean(name);
}

namespace {

std::vector<TokenId> encode_text(const ServedModel& m, const std::string& text,
                                 std::string_view param) {
    EncodeOptions eo;
    eo.add_special_tokens = true; // e.g. Llama's BOS, as HF's tokenizer(text) does
    std::vector<TokenId> ids = m.tokenizer().encode(text, eo);
    if (ids.empty() && text.empty())
        if (auto bos = m.tokenizer().bos_id()) ids.push_back(*bos);
    if (ids.empty())
        bad_request(param, detail::str_cat("'", param, "' encodes to no tokens",
                                           text.empty() ? " (it is empty)" : ""));
    return ids;
}

std::vector<TokenId> id_array(const JsonView& v, const std::string& param, int64_t n_vocab) {
    if (v.size() == 0) bad_request(param, "'" + param + "' must not be empty");
    std::vector<TokenId> ids;
    for (size_t i = 0; i < v.size(); ++i) {
        const std::string what = detail::str_cat(param, "[", i, "]");
        const int64_t id = v.at(i).integer(what);
        if (id < 0 || id >= n_vocab)
            bad_request(param, detail::str_cat("'", what, "' is token ", id,
                                               ", outside the vocabulary [0, ", n_vocab, ")"));
        ids.push_back(TokenId(id));
    }
    return ids;
}

// stop: a string or an array of up to 4 non-empty strings.
std::vector<std::string> stop_field(const JsonView& body) {
    const JsonView v = body["stop"];
    std::vector<std::string> out;
    if (v.is_null()) return out;
    if (v.is_string()) {
        out.push_back(v.str("stop"));
    } else if (v.is_array()) {
        if (v.size() > 4) bad_request("stop", "'stop' may hold at most 4 sequences");
        for (size_t i = 0; i < v.size(); ++i) out.push_back(v.at(i).str("stop"));
    } else {
        bad_request("stop", "'stop' must be a string or an array of strings");
    }
    for (const auto& s : out)
        if (s.empty()) bad_request("stop", "'stop' sequences must not be empty");
    return out;
}

// The fields both generation routes share.
void parse_sampling(const JsonView& body, const ServedModel& m, GenRequest& r) {
    r.model = model_field(body);
    SamplerOptions& s = r.opts.sampling;
    s.temperature = float(num_field(body, "temperature", 0, 2, 1));
    const double top_p = num_field(body, "top_p", 0, 1, 1);
    if (top_p == 0) s.temperature = 0; // only the most likely token is left
    else s.top_p = float(top_p);
    s.presence_penalty = float(num_field(body, "presence_penalty", -2, 2, 0));
    s.frequency_penalty = float(num_field(body, "frequency_penalty", -2, 2, 0));
    if (!body["seed"].is_null()) s.seed = uint64_t(body["seed"].integer("seed"));
    const JsonView bias = body["logit_bias"];
    if (!bias.is_null()) {
        if (!bias.is_object()) bad_request("logit_bias", "'logit_bias' must be an object");
        const int64_t V = m.model().config().vocab_size;
        for (const std::string& k : bias.keys()) {
            int64_t id = -1;
            try {
                size_t used = 0;
                id = std::stoll(k, &used);
                if (used != k.size()) id = -1;
            } catch (const std::exception&) {
            }
            if (id < 0 || id >= V)
                bad_request("logit_bias", "'logit_bias' key '" + k +
                                              "' is not a token id in [0, " + std::to_string(V) +
                                              ")");
            const double b = num_field(bias, k, -100, 100, 0);
            s.logit_bias[TokenId(id)] = float(b);
        }
    }
    r.opts.stop = stop_field(body);
    r.n = int(int_field(body, "n", 1, 16, 1));
    r.stream = bool_field(body, "stream", false);
    const JsonView so = body["stream_options"];
    if (!so.is_null()) {
        if (!r.stream)
            bad_request("stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (!so.is_object()) bad_request("stream_options", "'stream_options' must be an object");
        check_fields(so, {"include_usage"});
        r.include_usage = bool_field(so, "include_usage", false);
    }
    if (!body["user"].is_null()) body["user"].str("user");
}

// max_tokens against the context: a prompt that does not fit is a 400, never truncated.
void fit_context(GenRequest& r, const ServedModel& m, const JsonView& body,
                 std::string_view prompt_param, std::optional<int64_t> default_max) {
    size_t longest = 0;
    for (const auto& p : r.prompts) longest = std::max(longest, p.size());
    const int64_t room = m.n_ctx() - int64_t(longest);
    if (room < 1)
        bad_request(prompt_param,
                    detail::str_cat("This model's maximum context length is ", m.n_ctx(),
                                    " tokens, but the prompt has ", longest,
                                    " tokens; shorten it"),
                    "context_length_exceeded");
    std::string_view which = body.contains("max_completion_tokens") ? "max_completion_tokens"
                                                                     : "max_tokens";
    // Unset: the route's default, cut to what fits (only an explicit value is an error).
    const int64_t want = int_field(body, which, 1, INT32_MAX, std::min(default_max.value_or(room), room));
    if (want > room)
        bad_request(which,
                    detail::str_cat("This model's maximum context length is ", m.n_ctx(),
                                    " tokens; the prompt has ", longest, " and '", which,
                                    "' asks for ", want, " more (at most ", room, " fit)"),
                    "context_length_exceeded");
    r.opts.max_tokens = want;
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const JsonView& c, const std::string& param) {
    if (c.is_null()) return {};
    if (c.is_string()) return c.str(param);
    if (!c.is_array()) bad_request(param, "'" + param + "' must be a string or an array of parts");
    std::string out;
    for (size_t i = 0; i < c.size(); ++i) {
        const JsonView part = c.at(i);
        const std::string pp = detail::str_cat(param, "[", i, "]");
        if (!part.is_object()) bad_request(pp, "'" + pp + "' must be an object");
        const std::string type = part["type"].str(pp + ".type");
        if (type != "text")
            bad_request(pp + ".type", "content parts of type '" + type +
                                          "' are not supported (this model reads text)");
        out += part["text"].str(pp + ".text");
    }
    return out;
}

} // namespace

std::vector<std::vector<TokenId>> token_inputs(const JsonView& v, std::string_view param_sv,
                                               const ServedModel& m, bool add_special) {
    const std::string param(param_sv);
    const int64_t V = m.model().config().vocab_size;
    auto text_ids = [&](const std::string& text) {
        if (add_special) return encode_text(m, text, param);
        std::vector<TokenId> ids = m.tokenizer().encode(text);
        if (ids.empty()) bad_request(param, "'" + param + "' encodes to no tokens");
        return ids;
    };
    std::vector<std::vector<TokenId>> out;
    if (v.is_string()) {
        out.push_back(text_ids(v.str(param)));
    } else if (v.is_array() && v.size() > 0) {
        const JsonView first = v.at(0);
        if (first.is_integer()) {
            out.push_back(id_array(v, param, V));
        } else {
            if (v.size() > 2048) bad_request(param, "'" + param + "' holds more than 2048 items");
            for (size_t i = 0; i < v.size(); ++i) {
                const JsonView item = v.at(i);
                const std::string ip = detail::str_cat(param, "[", i, "]");
                if (item.is_string()) out.push_back(text_ids(item.str(ip)));
                else if (item.is_array()) out.push_back(id_array(item, ip, V));
                else bad_request(param, "'" + ip + "' must be a string or an array of token ids");
            }
        }
    } else {
        bad_request(param, "'" + param + "' must be a non-empty string, array of strings, array "
                                         "of token ids or array of token-id arrays");
    }
    return out;
}

GenRequest parse_completion(const JsonView& body, const ServedModel& m) {
    check_fields(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                        "stream_options", "stop", "presence_penalty", "frequency_penalty",
                        "logit_bias", "logprobs", "echo", "seed", "user"});
    GenRequest r;
    parse_sampling(body, m, r);
    if (!body.contains("prompt")) bad_request("prompt", "'prompt' is required");
    r.prompts = token_inputs(body["prompt"], "prompt", m, true);
    if (r.prompts.size() * size_t(r.n) > 64)
        bad_request("n", detail::str_cat(r.prompts.size(), " prompts x n = ", r.n,
                                         " is over 64 completions in one request"));
    r.echo = bool_field(body, "echo", false);
    if (!body["logprobs"].is_null()) r.top_logprobs = int(int_field(body, "logprobs", 0, 5, 0));
    fit_context(r, m, body, "prompt", 16); // OpenAI's default for completions
    return r;
}

GenRequest parse_chat(const JsonView& body, const ServedModel& m) {
    check_fields(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                        "top_p", "n", "stream", "stream_options", "stop", "presence_penalty",
                        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed",
                        "user"});
    GenRequest r;
    parse_sampling(body, m, r);
    const JsonView msgs = body["messages"];
    if (!msgs.is_array() || msgs.size() == 0)
        bad_request("messages", "'messages' must be a non-empty array");
    json conv = json::array();
    for (size_t i = 0; i < msgs.size(); ++i) {
        const JsonView msg = msgs.at(i);
        const std::string p = detail::str_cat("messages[", i, "]");
        if (!msg.is_object()) bad_request(p, "'" + p + "' must be an object");
        for (const std::string& k : msg.keys())
            if (k != "role" && k != "content" && k != "name")
                bad_request(p + "." + k, "'" + p + "." + k + "' is not supported");
        std::string role = msg["role"].str(p + ".role");
        if (role == "developer") role = "system"; // chat templates know system
        if (role != "system" && role != "user" && role != "assistant" && role != "tool")
            bad_request(p + ".role", "'" + p + ".role' must be one of system, developer, user, "
                                               "assistant, tool; got '" + role + "'");
        json jm = {{"role", role}, {"content", message_content(msg["content"], p + ".content")}};
        if (msg.contains("name")) jm["name"] = msg["name"].str(p + ".name");
        conv.push_back(std::move(jm));
    }
    const bool logprobs = bool_field(body, "logprobs", false);
    const int64_t top = int_field(body, "top_logprobs", 0, 20, 0);
    if (!logprobs && !body["top_logprobs"].is_null())
        bad_request("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    if (logprobs) r.top_logprobs = int(top);

    std::string text;
    try {
        text = m.chat_template().render(conv.dump(), {.add_generation_prompt = true});
    } catch (const Error& e) {
        bad_request("messages", std::string("the chat template rejected the messages: ") + e.what());
    }
    EncodeOptions eo;
    eo.allow_all_special = true; // the template's markers are special tokens
    r.prompts.push_back(m.tokenizer().encode(text, eo));
    if (r.prompts[0].empty()) bad_request("messages", "the conversation encodes to no tokens");
    fit_context(r, m, body, "messages", std::nullopt);
    return r;
}

std::vector<EngineJob> GenRequest::jobs() const {
    std::vector<EngineJob> out;
    for (const auto& p : prompts)
        for (int j = 0; j < n; ++j) {
            EngineJob job{p, opts, top_logprobs};
            if (opts.sampling.seed) job.opts.sampling.seed = *opts.sampling.seed + uint64_t(j);
            out.push_back(std::move(job));
        }
    return out;
}

} // namespace forge::serve::openai
