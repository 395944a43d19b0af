// The OpenAI routes over a real socket (cpp-httplib on 127.0.0.1): a streamed chat arrives as
// chunked SSE ending in [DONE] with the same text as the in-process answer, and a client that
// closes its socket mid-stream has its generation cancelled and its slot freed.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "serve/socket_util.h"

#include "serve/serve_test_util.h"
#include <forge/serve/middleware.h>

namespace forge::serve {
namespace {

using nlohmann::json;

// Connects to 127.0.0.1:port and sends one POST (Connection: close); returns the socket.
int post(int port, const std::string& target, const std::string& body) {
    int fd = forge::testing::connect_loopback(port);
    const std::string req = "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body;
    EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
    return fd;
}

// Reads until `until` appears in what was read (or the peer closes); returns all of it.
std::string read_until(int fd, const std::string& until) {
    std::string all;
    char buf[4096];
    ssize_t n;
    while (all.find(until) == std::string::npos && (n = ::recv(fd, buf, sizeof buf, 0)) > 0)
        all.append(buf, size_t(n));
    return all;
}

TEST(OpenAIHttp, StreamedChatOverLoopback) {
    App app;
    auto served = std::make_shared<ServedModel>("tiny", testing::serve_model(256),
                                                testing::byte_tokenizer());
    app.model(served);
    const int port = app.start("127.0.0.1", 0);
    json req = {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "hello"}}}},
                {"max_tokens", 12}, {"temperature", 0}};
    const json plain = json::parse(app.handle(Request::make("POST", "/v1/chat/completions",
                                                            req.dump())).body);
    req["stream"] = true;
    const int fd = post(port, "/v1/chat/completions", req.dump());
    const std::string all = read_until(fd, "[DONE]");
    ::close(fd);
    EXPECT_NE(all.find("text/event-stream"), std::string::npos);
    EXPECT_NE(all.find("data: [DONE]"), std::string::npos);
    // Chunked encoding splits the bytes; collect the JSON events from the data lines.
    std::string text;
    for (const std::string& d : testing::sse_data(all)) {
        if (d == "[DONE]" || d.empty() || d[0] != '{') continue;
        const json c = json::parse(d, nullptr, false);
        if (c.is_discarded()) continue;
        const json& delta = c["choices"][0]["delta"];
        if (delta.contains("content")) text += delta["content"].get<std::string>();
    }
    EXPECT_EQ(text, plain["choices"][0]["message"]["content"].get<std::string>());
    app.stop(1);
}

TEST(OpenAIHttp, ClosedSocketCancelsTheGeneration) {
    auto model = testing::serve_model(256);
    auto gate = std::make_shared<testing::GatedLM>(std::make_shared<TransformerLM>(*model));
    auto metrics = std::make_shared<Metrics>();
    App app;
    app.model(std::make_shared<ServedModel>(
        "tiny", model, testing::byte_tokenizer(),
        ServeOptions{.engine = {.slots = 2, .metrics = metrics}, .lm = gate}));
    const int port = app.start("127.0.0.1", 0);
    const int fd = post(port, "/v1/completions",
                        json{{"model", "tiny"}, {"prompt", "abc"}, {"max_tokens", 200},
                             {"stream", true}, {"temperature", 0}}.dump());
    read_until(fd, "\r\n\r\n"); // the response head: the stream has begun
    ::close(fd);
    // Let decode steps through one at a time until the slot is free: the server notices the
    // closed socket at its second or third write and cancels long before 200 tokens. The pause
    // between steps gives the stream's writer thread time to write each token (the engine
    // never waits for writers, so without it a fast model can finish first).
    int64_t steps = 0;
    while (metrics->value("forge_engine_slots_busy") > 0 || steps == 0) {
        if (gate->blocked()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            gate->allow(1);
            ++steps;
        } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        ASSERT_LT(steps, 199) << "the generation ran to its end: the disconnect was not seen";
    }
    EXPECT_EQ(metrics->value("forge_engine_generations_total", {{"finish_reason", "cancelled"}}), 1.0);
    gate->open();
    app.stop(1);
}

} // namespace
} // namespace forge::serve
