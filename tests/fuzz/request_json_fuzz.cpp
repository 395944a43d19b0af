// libFuzzer target for OpenAI request bodies: the first input byte picks a route, the rest is
// the body, run through App::handle with a tiny model behind it (streams are read to the end).
// Every input must give a well-formed response: a status in [200, 600) and, unless streamed,
// a JSON body (an OpenAI error object for any status >= 400); never a crash, sanitizer report
// or hang.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "generate/generate_test_util.h"
#include <forge/serve/openai.h>

namespace {

forge::App& app() {
    static forge::App* a = [] {
        // One layer, 16 wide: fast enough for thousands of generations a second.
        forge::ModelConfig c = forge::testing::small_config(forge::ModelFamily::gpt2, 257, 48);
        c.n_layer = 1;
        c.n_embd = 16;
        auto model = std::make_shared<forge::Transformer>(c, 1);
        model->eval();
        auto* app = new forge::App;
        app->model(std::make_shared<forge::serve::ServedModel>(
            "m", model, forge::testing::byte_tokenizer(), forge::serve::ServeOptions{.engine = {.slots = 2}}));
        return app;
    }();
    return *a;
}

constexpr const char* kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/embeddings",
                                   "/tokenize", "/detokenize"};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const char* route = kRoutes[data[0] % (sizeof(kRoutes) / sizeof(kRoutes[0]))];
    std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
    forge::Response r = app().handle(forge::Request::make("POST", route, body));
    if (r.status < 200 || r.status >= 600) std::abort();
    if (r.is_stream()) {
        r.collect();
        return 0;
    }
    const auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded()) std::abort();
    if (r.status >= 400 && !(j.contains("error") && j["error"].contains("message"))) std::abort();
    return 0;
}
