// The OpenAI-compatible routes (include/forge/serve/openai.h): request parsing lives in
// openai_request.cpp; here are the handlers, the engine event loop and the response shapes
// (OpenAI's JSON for completions, chat completions and their SSE chunks, embeddings, models).
#include <forge/serve/openai.h>

#include <chrono>
#include <random>

#include <nlohmann/json.hpp>

#include "chat_page.h"
#include "json_node.h"
#include "openai_request.h"
#include <forge/models/transformer.h>

namespace forge::serve {

using nlohmann::json;

namespace openai {
namespace {

// JSON text that survives any bytes (a token's raw text may be part of a UTF-8 character).
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_id(std::string_view prefix) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char hex[] = "0123456789abcdef";
    std::string s(prefix);
    for (int i = 0; i < 24; ++i) s += hex[rng() & 15];
    return s;
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string finish_name(FinishReason r) { return r == FinishReason::length ? "length" : "stop"; }

json model_json(const ServedModel& m) {
    return {{"id", m.id()}, {"object", "model"}, {"created", m.created()}, {"owned_by", "forge"}};
}

// The model a request names: 404 if unknown, 503 while the server is still loading.
std::shared_ptr<ServedModel> resolve(const ModelRegistry& reg, const std::string& id) {
    if (auto m = reg.find(id)) return m;
    if (!reg.ready()) throw HttpError(503, "the model is still loading; retry shortly", "", "",
                                      "model_loading");
    throw HttpError(404, "The model '" + id + "' does not exist", "invalid_request_error", "model",
                    "model_not_found");
}

// tokenize/detokenize: "model" may be left out when one model is served.
std::shared_ptr<ServedModel> resolve_optional(const ModelRegistry& reg, const JsonView& body) {
    if (body.contains("model")) return resolve(reg, model_field(body));
    auto all = reg.list();
    if (all.size() == 1) return all[0];
    if (all.empty()) throw HttpError(503, "the model is still loading; retry shortly", "", "",
                                     "model_loading");
    bad_request("model", "'model' is required when several models are served");
}

json usage_json(int64_t prompt, int64_t completion) {
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
}

json bytes_of(const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(int(c));
    return b;
}

// Per-token logprob entries in the two shapes OpenAI uses.
struct LogprobWriter {
    const Tokenizer& tok;
    bool chat;

    std::string text(TokenId id) const { return tok.decode(std::span<const TokenId>(&id, 1)); }

    // Chat: {"token", "logprob", "bytes", "top_logprobs": [...]}.
    json chat_entry(const std::vector<TokenLogprob>& lp) const {
        json top = json::array();
        for (size_t i = 1; i < lp.size(); ++i) {
            const std::string t = text(lp[i].id);
            top.push_back({{"token", t}, {"logprob", lp[i].logprob}, {"bytes", bytes_of(t)}});
        }
        const std::string t = text(lp[0].id);
        return {{"token", t}, {"logprob", lp[0].logprob}, {"bytes", bytes_of(t)},
                {"top_logprobs", top}};
    }

    // Completions (legacy): parallel arrays.
    void add_legacy(json& out, const std::vector<TokenLogprob>& lp, size_t& offset) const {
        const std::string t = text(lp[0].id);
        out["tokens"].push_back(t);
        out["token_logprobs"].push_back(lp[0].logprob);
        json top = json::object();
        for (size_t i = 1; i < lp.size(); ++i) top[text(lp[i].id)] = lp[i].logprob;
        out["top_logprobs"].push_back(top);
        out["text_offset"].push_back(offset);
        offset += t.size();
    }

    json empty() const {
        if (chat) return {{"content", json::array()}};
        return {{"tokens", json::array()},
                {"token_logprobs", json::array()},
                {"top_logprobs", json::array()},
                {"text_offset", json::array()}};
    }
};

// Reads a stream's events until every job has ended; `alive` is checked between waits so a
// client that went away cancels the generation. Returns false if it did.
bool pump(EngineStream& s, const std::function<bool()>& alive,
          const std::function<bool(EngineEvent&)>& on_event) {
    EngineEvent ev;
    while (!s.finished()) {
        if (!s.next(ev, std::chrono::milliseconds(50))) {
            if (!alive()) {
                s.cancel();
                return false;
            }
            continue;
        }
        if (!ev.error.empty())
            throw HttpError(ev.error.find("shutting down") != std::string::npos ? 503 : 500,
                            "generation failed: " + ev.error);
        if (!on_event(ev)) {
            s.cancel();
            return false;
        }
    }
    return true;
}

struct Choice {
    std::string text;
    json logprobs;
    size_t offset = 0;
    FinishReason finish = FinishReason::none;
    int64_t n_tokens = 0;
};

int64_t prompt_tokens(const GenRequest& r) {
    int64_t n = 0;
    for (const auto& p : r.prompts) n += int64_t(p.size());
    return n;
}

// Echoed prompt text of a choice (completions with echo).
std::string echo_text(const GenRequest& r, const ServedModel& m, size_t index) {
    if (!r.echo) return {};
    return m.tokenizer().decode(r.prompts[index / size_t(r.n)]);
}

Response generate(const ModelRegistry& reg, Request& req, bool chat) {
    const JsonView& body = req.json();
    if (!body.is_object()) bad_request("", "the request body must be a JSON object");
    auto m = resolve(reg, model_field(body));
    const GenRequest r = chat ? parse_chat(body, *m) : parse_completion(body, *m);
    auto stream = m->engine().submit(r.jobs());
    const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = unix_now();
    const LogprobWriter lpw{m->tokenizer(), chat};
    const std::string object = chat ? "chat.completion" : "text_completion";

    if (!r.stream) {
        std::vector<Choice> choices(stream->size());
        if (r.top_logprobs >= 0)
            for (Choice& c : choices) c.logprobs = lpw.empty();
        const bool done = pump(*stream, [&] { return req.connected(); }, [&](EngineEvent& ev) {
            Choice& c = choices[ev.index];
            if (ev.step.token >= 0 && !ev.step.eos && !ev.logprobs.empty()) {
                if (chat) c.logprobs["content"].push_back(lpw.chat_entry(ev.logprobs));
                else lpw.add_legacy(c.logprobs, ev.logprobs, c.offset);
            }
            if (ev.done) {
                c.text = echo_text(r, *m, ev.index) + ev.result.text;
                c.finish = ev.result.finish_reason;
                c.n_tokens = int64_t(ev.result.tokens.size());
            }
            return true;
        });
        if (!done) throw HttpError(499, "the client closed the request");
        json out = {{"id", id}, {"object", object}, {"created", created}, {"model", m->id()}};
        json arr = json::array();
        int64_t completion = 0;
        for (size_t i = 0; i < choices.size(); ++i) {
            const Choice& c = choices[i];
            completion += c.n_tokens;
            json ch = {{"index", i},
                       {"logprobs", r.top_logprobs >= 0 ? c.logprobs : json(nullptr)},
                       {"finish_reason", finish_name(c.finish)}};
            if (chat) ch["message"] = {{"role", "assistant"}, {"content", c.text}};
            else ch["text"] = c.text;
            arr.push_back(std::move(ch));
        }
        out["choices"] = std::move(arr);
        out["usage"] = usage_json(prompt_tokens(r), completion);
        return Response::json(dump(out));
    }

    const std::string model_id = m->id();
    return Response::sse([=, m = std::move(m), stream = std::move(stream)](SseWriter& w) {
        const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
        // A client that goes away is seen at a write; while nothing is written (queued, a long
        // prefill, text held back) a `: keep-alive` comment each second makes that write.
        auto last_write = std::chrono::steady_clock::now();
        auto send = [&](const std::string& data) {
            last_write = std::chrono::steady_clock::now();
            return w.send(data);
        };
        auto alive = [&] {
            if (!w.connected()) return false;
            const auto now = std::chrono::steady_clock::now();
            if (now - last_write < std::chrono::seconds(1)) return true;
            last_write = now;
            return w.comment("keep-alive");
        };
        auto chunk = [&](json choice) {
            json c = {{"id", id}, {"object", chunk_object}, {"created", created},
                      {"model", model_id}, {"choices", json::array({std::move(choice)})}};
            if (r.include_usage) c["usage"] = nullptr;
            return dump(c);
        };
        auto delta = [&](size_t index, const std::string& text, json logprobs, json finish) {
            json ch = {{"index", index}, {"logprobs", std::move(logprobs)},
                       {"finish_reason", std::move(finish)}};
            if (chat) ch["delta"] = text.empty() ? json::object() : json{{"content", text}};
            else ch["text"] = text;
            return chunk(std::move(ch));
        };
        // Chat streams open each choice with the assistant role; completions may echo.
        for (size_t i = 0; i < stream->size(); ++i) {
            bool ok = true;
            if (chat) {
                json ch = {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                           {"logprobs", nullptr}, {"finish_reason", nullptr}};
                ok = send(chunk(std::move(ch)));
            } else if (r.echo) {
                ok = send(delta(i, echo_text(r, *m, i), nullptr, nullptr));
            }
            if (!ok) return stream->cancel();
        }
        int64_t completion = 0;
        const bool done = pump(*stream, alive, [&](EngineEvent& ev) {
            json lp = nullptr;
            if (ev.step.token >= 0 && !ev.step.eos && !ev.logprobs.empty()) {
                if (chat) {
                    lp = {{"content", json::array({lpw.chat_entry(ev.logprobs)})}};
                } else {
                    lp = lpw.empty();
                    size_t offset = 0;
                    lpw.add_legacy(lp, ev.logprobs, offset);
                }
            }
            if (!ev.step.text.empty() || !lp.is_null())
                if (!send(delta(ev.index, ev.step.text, lp, nullptr))) return false;
            if (ev.done) {
                completion += int64_t(ev.result.tokens.size());
                return send(delta(ev.index, "", nullptr, finish_name(ev.result.finish_reason)));
            }
            return true;
        });
        if (!done) return;
        if (r.include_usage) {
            json u = {{"id", id}, {"object", chunk_object}, {"created", created},
                      {"model", model_id}, {"choices", json::array()},
                      {"usage", usage_json(prompt_tokens(r), completion)}};
            if (!send(dump(u))) return;
        }
        send("[DONE]");
    });
}

std::string base64(const std::vector<float>& v) {
    static constexpr char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // Little-endian float32 bytes, as OpenAI's base64 embeddings (x86 and ARM are LE).
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    const size_t n = v.size() * sizeof(float);
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    for (size_t i = 0; i < n; i += 3) {
        const uint32_t x = uint32_t(b[i]) << 16 | (i + 1 < n ? uint32_t(b[i + 1]) << 8 : 0) |
                           (i + 2 < n ? uint32_t(b[i + 2]) : 0);
        out += tbl[(x >> 18) & 63];
        out += tbl[(x >> 12) & 63];
        out += i + 1 < n ? tbl[(x >> 6) & 63] : '=';
        out += i + 2 < n ? tbl[x & 63] : '=';
    }
    return out;
}

Response embeddings(const ModelRegistry& reg, Request& req) {
    const JsonView& body = req.json();
    check_fields(body, {"model", "input", "encoding_format", "dimensions", "user"});
    auto m = resolve(reg, model_field(body));
    const int64_t C = m->model().config().n_embd;
    if (!body["dimensions"].is_null() && body["dimensions"].integer("dimensions") != C)
        bad_request("dimensions", detail::str_cat("this model's embeddings have ", C,
                                                  " dimensions; 'dimensions' cannot change that"));
    std::string format = "float";
    if (!body["encoding_format"].is_null()) format = body["encoding_format"].str("encoding_format");
    if (format != "float" && format != "base64")
        bad_request("encoding_format", "'encoding_format' must be 'float' or 'base64', got '" +
                                           format + "'");
    if (!body["user"].is_null()) body["user"].str("user");
    if (!body.contains("input")) bad_request("input", "'input' is required");
    const auto inputs = token_inputs(body["input"], "input", *m, false);
    json data = json::array();
    int64_t n_tokens = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        if (int64_t(inputs[i].size()) > m->n_ctx())
            bad_request("input", detail::str_cat("input ", i, " has ", inputs[i].size(),
                                                 " tokens; this model's maximum context length is ",
                                                 m->n_ctx()),
                        "context_length_exceeded");
        n_tokens += int64_t(inputs[i].size());
        std::vector<float> e = m->embed(inputs[i]);
        data.push_back({{"object", "embedding"},
                        {"index", i},
                        {"embedding", format == "base64" ? json(base64(e)) : json(e)}});
    }
    json out = {{"object", "list"}, {"data", std::move(data)}, {"model", m->id()},
                {"usage", {{"prompt_tokens", n_tokens}, {"total_tokens", n_tokens}}}};
    return Response::json(dump(out));
}

Response tokenize(const ModelRegistry& reg, Request& req) {
    const JsonView& body = req.json();
    check_fields(body, {"model", "prompt", "content", "add_special_tokens"});
    auto m = resolve_optional(reg, body);
    const char* field = body.contains("prompt") ? "prompt" : "content";
    if (!body.contains(field)) bad_request("prompt", "'prompt' (or 'content') is required");
    EncodeOptions eo;
    eo.add_special_tokens = bool_field(body, "add_special_tokens", true);
    const auto ids = m->tokenizer().encode(body[field].str(field), eo);
    json out = {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", m->n_ctx()}};
    return Response::json(dump(out));
}

Response detokenize(const ModelRegistry& reg, Request& req) {
    const JsonView& body = req.json();
    check_fields(body, {"model", "tokens"});
    auto m = resolve_optional(reg, body);
    const JsonView t = body["tokens"];
    if (!t.is_array()) bad_request("tokens", "'tokens' must be an array of token ids");
    std::vector<TokenId> ids;
    const int64_t V = int64_t(m->tokenizer().vocab_size());
    for (size_t i = 0; i < t.size(); ++i) {
        const int64_t id = t.at(i).integer(detail::str_cat("tokens[", i, "]"));
        if (id < 0 || id >= V)
            bad_request("tokens", detail::str_cat("'tokens[", i, "]' is ", id,
                                                  ", outside the vocabulary [0, ", V, ")"));
        ids.push_back(TokenId(id));
    }
    const std::string text = m->tokenizer().decode(ids);
    return Response::json(dump({{"prompt", text}, {"content", text}}));
}

} // namespace
} // namespace openai

void mount_openai(App& app, std::shared_ptr<ModelRegistry> models) {
    FORGE_CHECK(models != nullptr, "[serve] mount_openai needs a registry");
    using namespace openai;
    // The chat page; it needs no key (use_server_middleware leaves "/" open), the /v1 calls
    // it makes send the key typed into it.
    app.get("/", [](Request&) {
        return Response::text(std::string(chat_page_html()), 200, "text/html; charset=utf-8");
    });
    app.get("/health", [models](Request&) {
        if (!models->ready()) return Response::json(R"({"status":"loading"})", 503);
        return Response::json(R"({"status":"ok"})");
    });
    app.get("/v1/models", [models](Request&) {
        json data = json::array();
        for (const auto& m : models->list()) data.push_back(model_json(*m));
        return Response::json(dump({{"object", "list"}, {"data", data}}));
    });
    app.get("/v1/models/:id", [models](Request& req) {
        return Response::json(dump(model_json(*resolve(*models, req.param("id")))));
    });
    app.post("/v1/completions",
             [models](Request& req) { return generate(*models, req, false); });
    app.post("/v1/chat/completions",
             [models](Request& req) { return generate(*models, req, true); });
    app.post("/v1/embeddings", [models](Request& req) { return embeddings(*models, req); });
    app.post("/tokenize", [models](Request& req) { return tokenize(*models, req); });
    app.post("/detokenize", [models](Request& req) { return detokenize(*models, req); });
}

std::shared_ptr<ModelRegistry> App::models() {
    if (!models_) {
        models_ = std::make_shared<ModelRegistry>();
        mount_openai(*this, models_);
    }
    return models_;
}

App& App::model(std::shared_ptr<ServedModel> model) {
    models()->add(std::move(model));
    return *this;
}

} // namespace forge::serve
