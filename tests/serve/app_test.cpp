// In-process tests of forge::App (app.handle, no socket): routing, params, query, the onion
// order, error handlers, SSE, and every built-in middleware with its status and error body.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <forge/serve/app.h>
#include <forge/core/device.h>
#include <forge/serve/middleware.h>

using namespace forge::serve;
using nlohmann::json;

namespace {
Request get(const std::string& target, Headers h = {}) { return Request::make("GET", target, "", h); }
json body(const Response& r) { return json::parse(r.body); }
void expect_error(const Response& r, int status, const std::string& code = {}) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = body(r);
    ASSERT_TRUE(j.contains("error")) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_TRUE(j["error"]["type"].is_string());
    EXPECT_TRUE(j["error"].contains("param"));
    EXPECT_TRUE(j["error"].contains("code"));
    if (!code.empty()) {
        EXPECT_EQ(j["error"]["code"], code);
    }
}
} // namespace

TEST(App, RoutesParamsQueryAndMethods) {
    App app;
    app.get("/v1/models/:id", [](Request& r) {
        return Response::json(json{{"id", r.param("id")}, {"route", r.route}}.dump());
    });
    app.get("/search", [](Request& r) {
        return Response::text(r.query_param("q").value_or("-") + "|" +
                              r.query_param("n").value_or("-"));
    });
    app.post("/echo", [](Request& r) { return Response::json(r.json()["x"].dump()); });
    app.get("/files/*", [](Request& r) { return Response::text(r.param("*")); });

    auto r = app.handle(get("/v1/models/tiny%2Dx"));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(body(r)["id"], "tiny-x");
    EXPECT_EQ(body(r)["route"], "/v1/models/:id");
    EXPECT_EQ(app.handle(get("/search?q=a+b%21&n=3")).body, "a b!|3");
    EXPECT_EQ(app.handle(get("/files/a/b/c.txt")).body, "a/b/c.txt");
    EXPECT_EQ(app.handle(Request::make("POST", "/echo", R"({"x":[1,2]})")).body, "[1,2]");
    expect_error(app.handle(get("/nope")), 404, "unknown_url");
    auto m = app.handle(Request::make("DELETE", "/echo"));
    expect_error(m, 405, "method_not_allowed");
    EXPECT_EQ(m.headers["allow"], "POST");
    auto bad = app.handle(Request::make("POST", "/echo", "{not json"));
    expect_error(bad, 400, "invalid_json");
    // HEAD is served by GET routes.
    EXPECT_EQ(app.handle(Request::make("HEAD", "/search?q=z")).status, 200);
}

TEST(App, OnionOrderAndMountedRouters) {
    App app;
    std::vector<std::string> order;
    app.use([&](Request& r, const Next& next) {
        order.push_back("a-in");
        auto res = next(r);
        order.push_back("a-out");
        res.headers["x-a"] = "1";
        return res;
    });
    app.use("/v1", [&](Request& r, const Next& next) {
        order.push_back("v1-in");
        auto res = next(r);
        order.push_back("v1-out");
        return res;
    });
    Router v1;
    v1.use([&](Request& r, const Next& next) {
        order.push_back("router-mw:" + r.path + ":" + r.base_path);
        return next(r);
    });
    v1.get("/models", [&](Request& r) {
        order.push_back("handler");
        return Response::text(r.route);
    });
    app.use("/v1", v1);
    app.get("/v1/other", [](Request&) { return Response::text("after router"); });

    auto r = app.handle(get("/v1/models"));
    EXPECT_EQ(r.body, "/v1/models");
    EXPECT_EQ(r.headers["x-a"], "1");
    std::vector<std::string> want = {"a-in", "v1-in", "router-mw:/models:/v1", "handler",
                                     "v1-out", "a-out"};
    EXPECT_EQ(order, want);
    // Nothing in the router answers: the stack continues after it, with the path restored.
    EXPECT_EQ(app.handle(get("/v1/other")).body, "after router");
    // Middleware for /v1 does not run elsewhere.
    order.clear();
    app.handle(get("/health"));
    EXPECT_EQ(order, (std::vector<std::string>{"a-in", "a-out"}));
}

TEST(App, ErrorsBecomeResponsesThatOuterMiddlewareSees) {
    App app;
    int seen_status = 0;
    app.use([&](Request& r, const Next& next) {
        auto res = next(r);
        seen_status = res.status;
        return res;
    });
    app.get("/bad", [](Request&) -> Response { throw forge::InvalidArgument("bad thing"); });
    app.get("/boom", [](Request&) -> Response { throw std::runtime_error("kaput"); });
    app.get("/teapot", [](Request&) -> Response { throw HttpError(418, "teapot", "", "p", "c"); });
    app.get("/custom", [](Request&) -> Response { throw std::logic_error("custom"); });
    app.on_error([](Request& r, const std::exception_ptr& e) -> std::optional<Response> {
        try {
            std::rethrow_exception(e);
        } catch (const std::logic_error& x) {
            if (r.path == "/custom") return Response::text(std::string("handled: ") + x.what(), 299);
        } catch (...) {
        }
        return std::nullopt;
    });
    expect_error(app.handle(get("/bad")), 400);
    EXPECT_EQ(seen_status, 400);
    auto boom = app.handle(get("/boom"));
    expect_error(boom, 500);
    EXPECT_NE(boom.body.find("kaput"), std::string::npos);
    EXPECT_EQ(seen_status, 500);
    auto t = app.handle(get("/teapot"));
    expect_error(t, 418, "c");
    EXPECT_EQ(body(t)["error"]["param"], "p");
    auto c = app.handle(get("/custom"));
    EXPECT_EQ(c.status, 299);
    EXPECT_EQ(c.body, "handled: custom");
    // A middleware that throws is converted too.
    App app2;
    app2.use([](Request&, const Next&) -> Response { throw HttpError(401, "no"); });
    expect_error(app2.handle(get("/x")), 401);
}

TEST(App, SseStreamsAndErrorsMidStream) {
    App app;
    app.get("/events", [](Request&) {
        return Response::sse([](SseWriter& w) {
            w.send("one");
            w.send("two\nlines", "update", "7");
            w.comment("keepalive");
            throw forge::InvalidArgument("went wrong");
        });
    });
    auto r = app.handle(get("/events"));
    EXPECT_EQ(r.headers["content-type"], "text/event-stream");
    const std::string s = r.collect();
    EXPECT_NE(s.find("data: one\n\n"), std::string::npos);
    EXPECT_NE(s.find("event: update\nid: 7\ndata: two\ndata: lines\n\n"), std::string::npos);
    EXPECT_NE(s.find(": keepalive\n\n"), std::string::npos);
    EXPECT_NE(s.find("event: error\ndata: {\"error\""), std::string::npos);

    // A client gone: writes fail and the producer sees it.
    int sent = 0;
    app.get("/forever", [&](Request&) {
        return Response::sse([&](SseWriter& w) {
            while (w.send("tick")) ++sent;
            EXPECT_FALSE(w.connected());
        });
    });
    app.handle(get("/forever")).collect(3);
    EXPECT_EQ(sent, 3);
}

TEST(Middleware, RequestIdAndTraceparent) {
    App app;
    app.use(mw::request_id());
    app.get("/id", [](Request& r) { return Response::text(r.locals["request_id"]); });
    auto r = app.handle(get("/id"));
    EXPECT_EQ(r.body, r.headers["x-request-id"]);
    EXPECT_EQ(r.body.rfind("req_", 0), 0u);
    EXPECT_EQ(app.handle(get("/id", {{"X-Request-Id", "abc-123"}})).body, "abc-123");
    // Invalid ids are replaced.
    EXPECT_NE(app.handle(get("/id", {{"x-request-id", "bad id\n"}})).body, "bad id\n");
    const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    auto t = app.handle(get("/id", {{"traceparent", tp}}));
    EXPECT_EQ(t.body, "4bf92f3577b34da6a3ce929d0e0e4736");
    EXPECT_EQ(t.headers["traceparent"], tp);
    auto bad = app.handle(get("/id", {{"traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}}));
    EXPECT_EQ(bad.headers.count("traceparent"), 0u);
}

TEST(Middleware, AccessLogWritesJsonLinesAfterStreams) {
    std::vector<std::string> lines;
    App app;
    app.use(mw::request_id());
    app.use(mw::access_log([&](std::string_view l) { lines.emplace_back(l); }));
    app.get("/a/:x", [](Request&) { return Response::text("hello"); });
    app.get("/s", [](Request&) { return Response::sse([](SseWriter& w) { w.send("x"); }); });
    app.handle(get("/a/1", {{"x-request-id", "r1"}}));
    ASSERT_EQ(lines.size(), 1u);
    json j = json::parse(lines[0]);
    EXPECT_EQ(j["request_id"], "r1");
    EXPECT_EQ(j["route"], "/a/:x");
    EXPECT_EQ(j["status"], 200);
    EXPECT_EQ(j["bytes"], 5);
    auto s = app.handle(get("/s"));
    EXPECT_EQ(lines.size(), 1u); // not yet: the stream has not run
    s.collect();
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(json::parse(lines[1])["stream"], true);
}

TEST(Middleware, Cors) {
    App app;
    app.use(mw::cors({.origins = {"https://ok.example"}}));
    app.get("/x", [](Request&) { return Response::text("x"); });
    auto pre = app.handle(Request::make("OPTIONS", "/x", "",
                                        {{"origin", "https://ok.example"},
                                         {"access-control-request-method", "POST"}}));
    EXPECT_EQ(pre.status, 204);
    EXPECT_EQ(pre.headers["access-control-allow-origin"], "https://ok.example");
    EXPECT_NE(pre.headers["access-control-allow-headers"].find("authorization"), std::string::npos);
    auto r = app.handle(get("/x", {{"origin", "https://ok.example"}}));
    EXPECT_EQ(r.headers["access-control-allow-origin"], "https://ok.example");
    auto other = app.handle(get("/x", {{"origin", "https://evil.example"}}));
    EXPECT_EQ(other.headers.count("access-control-allow-origin"), 0u);
}

TEST(Middleware, BodyLimit413) {
    App app;
    app.use(mw::body_limit(10));
    app.post("/x", [](Request& r) { return Response::text(r.body); });
    EXPECT_EQ(app.handle(Request::make("POST", "/x", "0123456789")).status, 200);
    auto r = app.handle(Request::make("POST", "/x", "0123456789A"));
    expect_error(r, 413, "request_too_large");
    EXPECT_EQ(body(r)["error"]["type"], "invalid_request_error");
    // A body the transport dropped counts by its declared length.
    auto req = Request::make("POST", "/x");
    req.content_length = 1 << 30;
    req.body_truncated = true;
    expect_error(app.handle(req), 413);
}

TEST(Middleware, ApiKeys401) {
    App app;
    app.use(mw::api_keys({.keys = {"sk-one", "sk-two"}}));
    app.get("/health", [](Request&) { return Response::text("ok"); });
    app.get("/v1/models", [](Request& r) { return Response::text(r.locals["api_key_id"]); });
    EXPECT_EQ(app.handle(get("/health")).status, 200);
    auto none = app.handle(get("/v1/models"));
    expect_error(none, 401, "invalid_api_key");
    EXPECT_EQ(none.headers["www-authenticate"], "Bearer");
    expect_error(app.handle(get("/v1/models", {{"authorization", "Bearer sk-on"}})), 401,
                 "invalid_api_key");
    expect_error(app.handle(get("/v1/models", {{"authorization", "Bearer sk-one1"}})), 401);
    expect_error(app.handle(get("/v1/models", {{"authorization", "Basic sk-one"}})), 401);
    EXPECT_EQ(app.handle(get("/v1/models", {{"Authorization", "Bearer sk-two"}})).body, "key-1");
}

TEST(Middleware, LoadApiKeys) {
    const std::string path = testing::TempDir() + "/forge_keys.txt";
    {
        std::FILE* f = std::fopen(path.c_str(), "w");
        std::fputs("# comment\nsk-file\n\n  sk-flag  \n", f);
        std::fclose(f);
    }
    ::setenv("FORGE_TEST_KEYS", "sk-env1, sk-env2", 1);
    auto keys = mw::load_api_keys({"sk-flag"}, "FORGE_TEST_KEYS", path);
    EXPECT_EQ(keys, (std::vector<std::string>{"sk-flag", "sk-env1", "sk-env2", "sk-file"}));
    EXPECT_THROW(mw::load_api_keys({}, "", path + ".missing"), forge::NotFound);
}

TEST(Middleware, RateLimit429PerKey) {
    auto reg = std::make_shared<Metrics>();
    App app;
    app.use(mw::api_keys({.keys = {"a", "b"}}));
    app.use(mw::rate_limit({.requests_per_minute = 1, .burst = 2, .metrics = reg}));
    app.get("/v1/x", [](Request&) { return Response::text("ok"); });
    Headers ka = {{"authorization", "Bearer a"}}, kb = {{"authorization", "Bearer b"}};
    EXPECT_EQ(app.handle(get("/v1/x", ka)).status, 200);
    EXPECT_EQ(app.handle(get("/v1/x", ka)).status, 200);
    auto r = app.handle(get("/v1/x", ka));
    expect_error(r, 429, "rate_limit_exceeded");
    const int retry = std::stoi(r.headers["retry-after"]);
    EXPECT_GE(retry, 1);
    EXPECT_LE(retry, 60);
    EXPECT_EQ(app.handle(get("/v1/x", kb)).status, 200); // another key has its own bucket
    EXPECT_EQ(reg->value("forge_rate_limited_total"), 1);
}

TEST(Middleware, PrometheusMetrics) {
    auto reg = std::make_shared<Metrics>();
    App app;
    app.use(mw::metrics(reg));
    app.get("/v1/models/:id", [](Request&) { return Response::text("m"); });
    app.handle(get("/v1/models/a"));
    app.handle(get("/v1/models/b"));
    app.handle(get("/missing"));
    auto m = app.handle(get("/metrics"));
    EXPECT_EQ(m.status, 200);
    EXPECT_NE(m.headers["content-type"].find("text/plain"), std::string::npos);
    const std::string& t = m.body;
    EXPECT_NE(t.find("# TYPE forge_http_requests_total counter"), std::string::npos);
    EXPECT_NE(t.find("forge_http_requests_total{method=\"GET\",route=\"/v1/models/:id\",status=\"200\"} 2"),
              std::string::npos)
        << t;
    EXPECT_NE(t.find("route=\"unmatched\",status=\"404\"} 1"), std::string::npos) << t;
    EXPECT_NE(t.find("forge_http_request_duration_seconds_bucket{route=\"/v1/models/:id\",le=\"+Inf\"} 2"),
              std::string::npos)
        << t;
    EXPECT_NE(t.find("forge_http_request_duration_seconds_count{route=\"/v1/models/:id\"} 2"),
              std::string::npos);
}

TEST(Middleware, MetricsRefreshedAtEachScrape) {
    auto reg = std::make_shared<Metrics>();
    reg->gauge("queue_now", "read when scraped");
    int scrapes = 0;
    reg->on_render([&] { reg->set("queue_now", {{"q", "a"}}, ++scrapes * 10); });
    EXPECT_EQ(scrapes, 0); // nothing runs before the first scrape
    EXPECT_NE(reg->render().find("queue_now{q=\"a\"} 10\n"), std::string::npos);
    App app;
    app.use(mw::metrics(reg));
    const std::string t = app.handle(get("/metrics")).body;
    EXPECT_NE(t.find("queue_now{q=\"a\"} 20\n"), std::string::npos) << t;
    EXPECT_EQ(scrapes, 2);
}

TEST(Middleware, GpuMemoryGaugesFollowTheAllocator) {
    Metrics reg;
    add_gpu_memory_metrics(reg, 0);
    const std::string t = reg.render();
    EXPECT_NE(t.find("# TYPE forge_gpu_memory_allocated_bytes gauge"), std::string::npos) << t;
    // The values are the allocator's own (zero in a build or on a machine without CUDA;
    // tests/cuda checks them against a live allocation).
    const forge::cuda::MemoryStats s = forge::cuda::memory_stats(0);
    EXPECT_EQ(reg.value("forge_gpu_memory_allocated_bytes", {{"device", "0"}}), double(s.allocated));
    EXPECT_EQ(reg.value("forge_gpu_memory_reserved_bytes", {{"device", "0"}}), double(s.reserved));
    EXPECT_EQ(reg.value("forge_gpu_memory_peak_bytes", {{"device", "0"}}), double(s.peak));
}

TEST(Json, ViewAndTypedErrors) {
    auto v = parse_json(R"({"a": {"b": [1, 2.5, "s", true]}, "n": null})");
    EXPECT_EQ(v["a"]["b"].size(), 4u);
    EXPECT_EQ(v["a"]["b"].at(0).integer(), 1);
    EXPECT_DOUBLE_EQ(v["a"]["b"].at(1).num(), 2.5);
    EXPECT_EQ(v["a"]["b"].at(2).str(), "s");
    EXPECT_TRUE(v["a"]["b"].at(3).boolean());
    EXPECT_TRUE(v["missing"]["deeper"].is_null());
    EXPECT_TRUE(v["n"].is_null());
    try {
        v["a"]["b"].at(2).integer("max_tokens");
        FAIL();
    } catch (const HttpError& e) {
        EXPECT_EQ(e.status(), 400);
        EXPECT_EQ(e.param(), "max_tokens");
    }
    EXPECT_THROW(parse_json(std::string(1000, '[')), HttpError);
    EXPECT_THROW(parse_json("{\"a\":"), HttpError);
}
