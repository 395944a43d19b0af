// forge::App and Router: Express-style routing and an onion of middleware over Request and
// Response (http.h). Handlers *return* a Response; middleware gets `next` and returns what it
// returns (possibly changed). Exceptions thrown by middleware or handlers go to the error
// handlers at the layer that threw, so outer middleware (logs, metrics) sees a Response.
// The socket side (cpp-httplib) is behind a pimpl: App::handle() runs the same stack in-process.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <forge/serve/http.h>

namespace forge::serve {

class ServedModel;
class ModelRegistry;

using Next = std::function<Response(Request&)>;
using Handler = std::function<Response(Request&)>;
using Middleware = std::function<Response(Request&, const Next&)>;
/// Returns a response for the exception, or none to pass it to the next error handler (the
/// last one is error_response()).
using ErrorHandler = std::function<std::optional<Response>(Request&, const std::exception_ptr&)>;

/// A stack of middleware and routes, mountable under a prefix. Patterns are '/'-separated
/// segments; ":name" captures one segment into req.params, a final "*" matches the rest
/// (captured as params["*"]).
class Router {
  public:
    Router();
    Router(const Router&);
    Router& operator=(const Router&);
    Router(Router&&) noexcept;
    Router& operator=(Router&&) noexcept;
    ~Router();

    Router& use(Middleware mw);
    /// Middleware that only runs for paths under `prefix`.
    Router& use(const std::string& prefix, Middleware mw);
    /// Mounts `router` under `prefix` (its patterns are relative to it).
    Router& use(const std::string& prefix, Router router);
    Router& get(const std::string& pattern, Handler h);
    Router& post(const std::string& pattern, Handler h);
    Router& put(const std::string& pattern, Handler h);
    Router& del(const std::string& pattern, Handler h);
    Router& patch(const std::string& pattern, Handler h);
    /// Any method.
    Router& all(const std::string& pattern, Handler h);
    Router& route(const std::string& method, const std::string& pattern, Handler h);
    /// Error handlers, tried in order for exceptions thrown inside this router.
    Router& on_error(ErrorHandler h);

    /// Runs the stack on `req`; `fallthrough` runs when nothing here answers (404 at the top).
    Response dispatch(Request& req, const Next& fallthrough) const;

    struct Impl;

  private:
    friend class App;
    friend void mark_root(Router& r);
    std::shared_ptr<Impl> impl_;
};

struct ListenOptions {
    /// Connection threads (each open SSE stream holds one).
    int threads = 32;
    /// Bodies larger than this are not buffered: the request arrives with body_truncated set
    /// and gets 413 (the body_limit middleware usually answers first, with its own limit).
    uint64_t max_buffered_body = 64ull << 20;
    int read_timeout_s = 30;
    int write_timeout_s = 30;
    int keep_alive_timeout_s = 5;
};

/// The application. Usage:
///   forge::App app;
///   app.use(forge::mw::request_id());
///   app.get("/v1/models/:id", [](forge::Request& r) { return forge::Response::json(...); });
///   app.listen("127.0.0.1", 8080);   // blocks until stop()
class App {
  public:
    App();
    ~App();
    App(const App&) = delete;
    App& operator=(const App&) = delete;

    App& use(Middleware mw);
    App& use(const std::string& prefix, Middleware mw);
    App& use(const std::string& prefix, Router router);
    App& get(const std::string& pattern, Handler h);
    App& post(const std::string& pattern, Handler h);
    App& put(const std::string& pattern, Handler h);
    App& del(const std::string& pattern, Handler h);
    App& patch(const std::string& pattern, Handler h);
    App& all(const std::string& pattern, Handler h);
    App& on_error(ErrorHandler h);
    Router& router();

    /// Serves `model` (openai.h) under its id: the first call mounts the OpenAI routes
    /// (/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings, /health, /tokenize,
    /// /detokenize) on this app, later calls add models to them.
    App& model(std::shared_ptr<ServedModel> model);
    /// The registry behind model(), mounting the routes if that has not happened yet (e.g. to
    /// listen first and add the model once loaded).
    std::shared_ptr<ModelRegistry> models();

    /// Runs the whole stack in-process (no socket). Never throws: errors become responses.
    Response handle(Request req) const;

    /// Binds host:port (port 0: an ephemeral one) and serves in a background thread; returns
    /// the port bound. Throws Error if it cannot bind.
    int start(const std::string& host, int port, const ListenOptions& opts = {});
    /// start() then waits until stop().
    void listen(const std::string& host, int port, const ListenOptions& opts = {});
    /// The bound port (0 when not listening).
    int port() const;
    bool running() const;
    /// Graceful stop: stops accepting, lets in-flight requests finish for up to `drain_s`
    /// seconds, then tells remaining streams the client is gone (SseWriter::connected() turns
    /// false), and returns once the server thread has ended. Safe to call twice.
    void stop(double drain_s = 10.0);
    /// Requests being handled right now (streams included).
    int64_t in_flight() const;

    struct Transport;

  private:
    Router root_;
    std::unique_ptr<Transport> transport_;
    std::shared_ptr<ModelRegistry> models_;
};

} // namespace forge::serve

namespace forge {
using serve::App;
using serve::Request;
using serve::Response;
using serve::Router;
} // namespace forge
