// Black-box tests of App over a real socket on 127.0.0.1 (ephemeral port): routing through
// cpp-httplib, JSON error bodies, the body cap, SSE streaming, graceful stop.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "serve/socket_util.h"

#include <nlohmann/json.hpp>

#include <forge/serve/app.h>
#include <forge/serve/middleware.h>

using namespace forge::serve;

namespace {

struct Reply {
    int status = 0;
    std::string head, body;
};

// One HTTP/1.1 request with Connection: close; returns status, raw head and raw body.
Reply http(int port, const std::string& method, const std::string& target,
           const std::string& body = {}, const std::string& extra_headers = {}) {
    int fd = forge::testing::connect_loopback(port);
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" +
                      extra_headers + "Content-Length: " + std::to_string(body.size()) +
                      "\r\n\r\n" + body;
    size_t off = 0;
    while (off < req.size()) {
        ssize_t n = ::send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += size_t(n);
    }
    std::string all;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) all.append(buf, size_t(n));
    ::close(fd);
    Reply r;
    size_t sep = all.find("\r\n\r\n");
    r.head = all.substr(0, sep);
    r.body = sep == std::string::npos ? "" : all.substr(sep + 4);
    if (all.size() > 12) r.status = std::stoi(all.substr(9, 3));
    return r;
}

} // namespace

TEST(Http, ServesTheAppOnLoopback) {
    App app;
    app.use(mw::request_id());
    app.use(mw::body_limit(1000));
    app.use(mw::api_keys({.keys = {"sk-test"}}));
    app.get("/health", [](Request&) { return Response::json(R"({"status":"ok"})"); });
    app.post("/v1/echo/:name", [](Request& r) {
        return Response::json(nlohmann::json{{"name", r.param("name")},
                                             {"x", r.json()["x"].integer("x")},
                                             {"q", r.query_param("q").value_or("")}}
                                  .dump());
    });
    app.get("/v1/stream", [](Request&) {
        return Response::sse([](SseWriter& w) {
            for (int i = 0; i < 3; ++i) w.send("{\"i\":" + std::to_string(i) + "}");
            w.send("[DONE]");
        });
    });
    const int port = app.start("127.0.0.1", 0, {.threads = 4, .max_buffered_body = 4096});
    ASSERT_GT(port, 0);
    EXPECT_TRUE(app.running());

    auto h = http(port, "GET", "/health");
    EXPECT_EQ(h.status, 200);
    EXPECT_NE(h.body.find("\"ok\""), std::string::npos);
    EXPECT_NE(h.head.find("x-request-id: req_"), std::string::npos) << h.head;

    const std::string auth = "Authorization: Bearer sk-test\r\n";
    auto e = http(port, "POST", "/v1/echo/bob?q=hi%20there", R"({"x": 42})", auth);
    EXPECT_EQ(e.status, 200) << e.body;
    auto j = nlohmann::json::parse(e.body);
    EXPECT_EQ(j["name"], "bob");
    EXPECT_EQ(j["x"], 42);
    EXPECT_EQ(j["q"], "hi there");

    auto no_key = http(port, "POST", "/v1/echo/bob", R"({"x": 1})");
    EXPECT_EQ(no_key.status, 401);
    EXPECT_EQ(nlohmann::json::parse(no_key.body)["error"]["code"], "invalid_api_key");

    auto bad = http(port, "POST", "/v1/echo/bob", R"({"x": "one"})", auth);
    EXPECT_EQ(bad.status, 400);
    EXPECT_EQ(nlohmann::json::parse(bad.body)["error"]["param"], "x");

    // Over the middleware's limit, and over the transport's buffer cap: both 413 with JSON.
    auto big = http(port, "POST", "/v1/echo/bob", std::string(2000, ' '), auth);
    EXPECT_EQ(big.status, 413);
    EXPECT_EQ(nlohmann::json::parse(big.body)["error"]["code"], "request_too_large");
    auto huge = http(port, "POST", "/v1/echo/bob", std::string(100000, ' '), auth);
    EXPECT_EQ(huge.status, 413);
    EXPECT_EQ(nlohmann::json::parse(huge.body)["error"]["code"], "request_too_large");

    auto nf = http(port, "GET", "/v1/none", "", auth);
    EXPECT_EQ(nf.status, 404);
    EXPECT_EQ(nlohmann::json::parse(nf.body)["error"]["code"], "unknown_url");

    auto s = http(port, "GET", "/v1/stream", "", auth);
    EXPECT_EQ(s.status, 200);
    EXPECT_NE(s.head.find("text/event-stream"), std::string::npos);
    // Chunked framing around the events: the payloads appear in order.
    const size_t p0 = s.body.find("data: {\"i\":0}"), p2 = s.body.find("data: {\"i\":2}"),
                 pd = s.body.find("data: [DONE]");
    EXPECT_NE(p0, std::string::npos);
    EXPECT_LT(p0, p2);
    EXPECT_LT(p2, pd);
    EXPECT_NE(pd, std::string::npos);

    app.stop(5);
    EXPECT_FALSE(app.running());
    EXPECT_EQ(app.in_flight(), 0);
}

TEST(Http, StopEndsOpenStreams) {
    App app;
    std::atomic<bool> producer_saw_gone{false};
    std::atomic<bool> started{false};
    app.get("/forever", [&](Request&) {
        return Response::sse([&](SseWriter& w) {
            started = true;
            while (w.comment("tick")) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            producer_saw_gone = true;
        });
    });
    const int port = app.start("127.0.0.1", 0, {.threads = 2});
    std::thread client([port] { http(port, "GET", "/forever"); });
    while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    app.stop(0.05); // drain window too short for a stream that never ends: it is told to end
    client.join();
    EXPECT_TRUE(producer_saw_gone);
    EXPECT_FALSE(app.running());
}

TEST(Http, BindFailureIsAClearError) {
    App a, b;
    const int port = a.start("127.0.0.1", 0);
    EXPECT_THROW(b.start("127.0.0.1", port), forge::Error);
    a.stop(1);
}
