// OpenAI-compatible routes over served models: GET /v1/models, /v1/models/:id,
// POST /v1/completions, /v1/chat/completions, /v1/embeddings, plus GET /health,
// POST /tokenize and /detokenize, and the chat web page at GET /. Each model runs generations on its own Engine (engine.h).
// Not here: auth, rate limits, /metrics (middleware.h), the CLI (cli/cmd_serve.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <forge/serve/app.h>
#include <forge/serve/engine.h>
#include <forge/tokenizers/chat_template.h>

namespace forge {
class Transformer;
struct LoadedModel;
} // namespace forge

namespace forge::serve {

class Metrics;

struct ServeOptions {
    /// The model's engine: slots, queue bound, prefill budget, metrics (slots, queue, tokens,
    /// time to first token).
    EngineOptions engine{};
    /// Context a request may use (prompt + max_tokens); 0: the model's n_ctx. Larger than the
    /// model's is an error.
    int64_t ctx = 0;
    /// The chat template; none: the model folder's tokenizer_config.json `chat_template`, else
    /// ChatML.
    std::optional<ChatTemplate> chat_template{};
    /// What the engine runs; none: a TransformerLM over the model. (A wrapper over it, e.g. a
    /// test's gate or a later quantized path.)
    std::shared_ptr<CausalLM> lm{};
};

/// One model behind the OpenAI routes: weights, tokenizer, chat template and its engine.
class ServedModel {
  public:
    /// `tokenizer` is required (the routes speak text). Starts the model's engine.
    ServedModel(std::string id, std::shared_ptr<Transformer> model, Tokenizer tokenizer,
                ServeOptions opts = {});
    /// From load_model_dir(); reads `chat_template` from dir/tokenizer_config.json if present.
    static std::shared_ptr<ServedModel> from_loaded(std::string id, const LoadedModel& loaded,
                                                    ServeOptions opts = {});
    ~ServedModel();

    const std::string& id() const { return id_; }
    /// Unix seconds when it was loaded (OpenAI's `created`).
    int64_t created() const { return created_; }
    /// The context requests may use.
    int64_t n_ctx() const { return n_ctx_; }
    Transformer& model() const { return *model_; }
    const Tokenizer& tokenizer() const { return tokenizer_; }
    const ChatTemplate& chat_template() const { return chat_template_; }
    Engine& engine() const { return *engine_; }

    /// Embedding of `ids`: the final-norm hidden states mean-pooled over the positions, then
    /// scaled to unit length (as OpenAI's embeddings are). (n_embd)
    std::vector<float> embed(std::span<const TokenId> ids) const;

  private:
    std::string id_;
    int64_t created_ = 0, n_ctx_ = 0;
    std::shared_ptr<Transformer> model_;
    Tokenizer tokenizer_;
    ChatTemplate chat_template_;
    std::unique_ptr<Engine> engine_;
};

/// The models the routes answer for. Thread-safe: models can be added while serving (the CLI
/// listens before the weights are loaded, and /health says 503 until then).
class ModelRegistry {
  public:
    void add(std::shared_ptr<ServedModel> model);
    /// None if absent.
    std::shared_ptr<ServedModel> find(std::string_view id) const;
    std::vector<std::shared_ptr<ServedModel>> list() const;
    /// /health answers 503 until the registry is ready (set by add(); set_loading(true) clears it).
    void set_loading(bool loading);
    bool ready() const;

  private:
    mutable std::mutex mu_;
    std::vector<std::shared_ptr<ServedModel>> models_;
    bool loading_ = false;
};

/// Mounts the routes on `app`; they answer from `models`.
void mount_openai(App& app, std::shared_ptr<ModelRegistry> models);

/// The middleware stack of `forge serve`, in order: request id, access log, metrics (and
/// GET /metrics), CORS, body limit, API keys (/ and /health open), rate limit.
struct ServerOptions {
    std::vector<std::string> api_keys{};   ///< none: open
    double rate_limit_per_min = 0;         ///< 0: off; else per key (or address)
    double rate_limit_burst = 0;           ///< 0: a tenth of a minute's allowance, at least 1
    uint64_t max_body = 4ull << 20;        ///< 413 beyond
    bool access_log = true;                ///< JSON lines on stderr
    std::shared_ptr<Metrics> metrics{};    ///< required: /metrics renders it
};
void use_server_middleware(App& app, const ServerOptions& opts);

} // namespace forge::serve
