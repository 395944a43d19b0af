// ServedModel and ModelRegistry (include/forge/serve/openai.h): a loaded model with its chat
// template and engine, and the thread-safe set of them that the OpenAI routes answer from.
#include <forge/serve/openai.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>
#include <forge/serve/middleware.h>

namespace forge::serve {

ServedModel::ServedModel(std::string id, std::shared_ptr<Transformer> model, Tokenizer tokenizer,
                         ServeOptions opts)
    : id_(std::move(id)), model_(std::move(model)), tokenizer_(std::move(tokenizer)),
      chat_template_(opts.chat_template ? *opts.chat_template : ChatTemplate::chatml()) {
    FORGE_CHECK(model_ != nullptr, "[serve] no model");
    FORGE_CHECK(!id_.empty(), "[serve] a served model needs an id");
    const int64_t model_ctx = model_->config().n_ctx;
    FORGE_CHECK(opts.ctx >= 0 && opts.ctx <= model_ctx, "[serve] ctx must be in [0, ", model_ctx,
                "] (the model's context; 0 = all of it), got ", opts.ctx);
    n_ctx_ = opts.ctx > 0 ? opts.ctx : model_ctx;
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    std::shared_ptr<CausalLM> lm = opts.lm;
    if (!lm) lm = std::make_shared<TransformerLM>(*model_);
    FORGE_CHECK(lm->n_vocab() == model_->config().vocab_size, "[serve] the engine's model has ",
                lm->n_vocab(), " logits, the model ", model_->config().vocab_size);
    engine_ = std::make_unique<Engine>(lm, tokenizer_, opts.engine);
}

ServedModel::~ServedModel() = default;

std::shared_ptr<ServedModel> ServedModel::from_loaded(std::string id, const LoadedModel& loaded,
                                                      ServeOptions opts) {
    FORGE_CHECK(loaded.tokenizer.has_value(), "[serve] the model folder ", loaded.dir.string(),
                " has no tokenizer; serving needs one");
    if (!opts.chat_template) {
        const auto cfg_path = loaded.dir / "tokenizer_config.json";
        std::ifstream f(cfg_path);
        if (f) {
            std::stringstream ss;
            ss << f.rdbuf();
            const auto j = nlohmann::json::parse(ss.str(), nullptr, false);
            if (j.is_object() && j.contains("chat_template"))
                opts.chat_template = ChatTemplate::from_tokenizer_config(ss.str());
        }
    }
    return std::make_shared<ServedModel>(std::move(id), loaded.model, *loaded.tokenizer,
                                         std::move(opts));
}

std::vector<float> ServedModel::embed(std::span<const TokenId> ids) const {
    FORGE_CHECK(!ids.empty() && int64_t(ids.size()) <= n_ctx_, "[serve] embedding input of ",
                ids.size(), " tokens; 1 to ", n_ctx_, " fit");
    NoGradGuard no_grad;
    std::vector<int64_t> v(ids.begin(), ids.end());
    Tensor h = model_->hidden(Tensor::from_vector(v, {1, int64_t(v.size())})); // (1, T, C)
    Tensor pooled = mean(h, {1}).reshape({h.size(2)}).to(DType::f32).contiguous(); // (C)
    const float* p = pooled.data<float>();
    std::vector<float> out(p, p + pooled.numel());
    double norm = 0;
    for (float x : out) norm += double(x) * x;
    norm = std::sqrt(norm);
    if (norm > 0)
        for (float& x : out) x = float(x / norm);
    return out;
}

// ---------------------------------------------------------------- middleware

void use_server_middleware(App& app, const ServerOptions& o) {
    FORGE_CHECK(o.metrics != nullptr, "[serve] use_server_middleware needs a metrics registry");
    FORGE_CHECK(o.rate_limit_per_min >= 0 && o.rate_limit_burst >= 0,
                "[serve] rate limits must be >= 0");
    app.use(mw::request_id());
    if (o.access_log) app.use(mw::access_log());
    app.use(mw::metrics(o.metrics));
    app.use(mw::cors());
    app.use(mw::body_limit(o.max_body));
    app.use(mw::api_keys({.keys = o.api_keys, .open_paths = {"/", "/health"}})); // /: chat page
    if (o.rate_limit_per_min > 0) {
        const double burst = o.rate_limit_burst > 0 ? o.rate_limit_burst
                                                    : std::max(1.0, o.rate_limit_per_min / 10);
        app.use(mw::rate_limit({.requests_per_minute = o.rate_limit_per_min,
                                .burst = burst,
                                .metrics = o.metrics}));
    }
}

// ---------------------------------------------------------------- ModelRegistry

void ModelRegistry::add(std::shared_ptr<ServedModel> model) {
    FORGE_CHECK(model != nullptr, "[serve] no model");
    std::lock_guard lk(mu_);
    for (const auto& m : models_)
        FORGE_CHECK(m->id() != model->id(), "[serve] a model named '", model->id(),
                    "' is already served");
    models_.push_back(std::move(model));
    loading_ = false;
}

std::shared_ptr<ServedModel> ModelRegistry::find(std::string_view id) const {
    std::lock_guard lk(mu_);
    for (const auto& m : models_)
        if (m->id() == id) return m;
    return nullptr;
}

std::vector<std::shared_ptr<ServedModel>> ModelRegistry::list() const {
    std::lock_guard lk(mu_);
    return models_;
}

void ModelRegistry::set_loading(bool loading) {
    std::lock_guard lk(mu_);
    loading_ = loading;
}

bool ModelRegistry::ready() const {
    std::lock_guard lk(mu_);
    return !loading_ && !models_.empty();
}

} // namespace forge::serve
