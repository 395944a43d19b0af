// App's socket side: cpp-httplib's Server behind App::Transport. Every request becomes a
// forge::serve::Request and runs App::handle(); SSE responses stream through httplib's chunked
// content provider. Bodies over the buffer cap are drained, not kept (body_truncated).
#include <forge/serve/app.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <strings.h>
#include <sys/socket.h>
#include <thread>

#include <httplib.h>

#include "json_node.h"

namespace forge::serve {

struct App::Transport {
    httplib::Server svr;
    std::thread thread;
    std::atomic<int64_t> in_flight{0};
    std::atomic<bool> closing{false};
    std::atomic<bool> running{false};
    std::atomic<int> port{0};
    uint64_t cap = 0;
    std::mutex mu;
    std::condition_variable cv;
    bool stopped = false;
};

void mark_root(Router& r);

App::App() { mark_root(root_); }

App::~App() { stop(0); }

namespace {

Request to_request(const httplib::Request& hr) {
    Request r;
    r.method = hr.method;
    r.target = hr.target;
    const size_t q = hr.target.find('?');
    r.path = decode_path(std::string_view(hr.target).substr(0, q));
    if (q != std::string::npos) r.query = parse_query(std::string_view(hr.target).substr(q + 1));
    for (auto& [k, v] : hr.headers) {
        auto it = r.headers.find(k);
        if (it == r.headers.end()) r.headers.emplace(k, v);
        else it->second += ", " + v;
    }
    r.remote_addr = hr.remote_addr;
    return r;
}

} // namespace

int App::start(const std::string& host, int port, const ListenOptions& opts) {
    FORGE_CHECK(!transport_ || !transport_->running, "[serve] the app is already listening");
    FORGE_CHECK(opts.threads > 0, "[serve] ListenOptions::threads must be > 0");
    transport_ = std::make_unique<Transport>();
    Transport* t = transport_.get();
    t->cap = opts.max_buffered_body;
    auto& svr = t->svr;
    const int n_threads = opts.threads;
    svr.new_task_queue = [n_threads] { return new httplib::ThreadPool(size_t(n_threads)); };
    svr.set_payload_max_length(size_t(opts.max_buffered_body));
    svr.set_read_timeout(opts.read_timeout_s, 0);
    svr.set_write_timeout(opts.write_timeout_s, 0);
    svr.set_keep_alive_timeout(opts.keep_alive_timeout_s);
    svr.set_tcp_nodelay(true);
    // httplib's default also sets SO_REUSEPORT, which lets a second server bind the same port
    // silently; keep SO_REUSEADDR only, so a taken port is a clear error.
    svr.set_socket_options([](socket_t sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });

    // Runs the app and hands its Response to httplib.
    auto serve = [this, t](const httplib::Request& hr, httplib::Response& hres, std::string body,
                           uint64_t total, bool truncated) {
        ++t->in_flight;
        Request req = to_request(hr);
        req.body = std::move(body);
        req.content_length = total;
        req.body_truncated = truncated;
        req.connected_probe = [t] { return !t->closing.load(); };
        Response res = handle(std::move(req));
        hres.status = res.status;
        std::string content_type = "text/plain";
        for (auto& [k, v] : res.headers) {
            if (::strcasecmp(k.c_str(), "content-type") == 0) content_type = v;
            else hres.set_header(k, v);
        }
        if (!res.is_stream()) {
            hres.set_content(res.body, content_type);
            --t->in_flight;
            return;
        }
        StreamProducer producer = std::move(res.stream);
        hres.set_chunked_content_provider(
            content_type,
            [t, producer](size_t, httplib::DataSink& sink) {
                SseWriter w([&sink](std::string_view s) { return sink.write(s.data(), s.size()); },
                            [t] { return !t->closing.load(); });
                run_stream(producer, w);
                sink.done();
                return true;
            },
            [t](bool) { --t->in_flight; });
    };
    auto plain = [serve](const httplib::Request& hr, httplib::Response& hres) {
        serve(hr, hres, hr.body, hr.body.size(), false);
    };
    auto with_reader = [serve, t](const httplib::Request& hr, httplib::Response& hres,
                                  const httplib::ContentReader& reader) {
        std::string body;
        uint64_t total = 0;
        bool truncated = false;
        const bool ok = reader([&](const char* d, size_t n) {
            total += n;
            if (!truncated && body.size() + n <= t->cap) {
                body.append(d, n);
            } else {
                truncated = true;
                std::string().swap(body);
            }
            return true;
        });
        if (!ok) {
            // httplib refuses (and drains) a Content-Length over the cap before we see a byte.
            const uint64_t declared = hr.get_header_value<uint64_t>("Content-Length");
            if (declared > t->cap) {
                truncated = true;
                total = declared;
                body.clear();
            } else {
                hres.status = 400;
                hres.set_content(error_json(400, "the request body could not be read"),
                                 "application/json");
                return;
            }
        }
        serve(hr, hres, std::move(body), total, truncated);
    };
    const std::string any = ".*";
    svr.Get(any, plain);
    svr.Options(any, plain);
    svr.Post(any, with_reader);
    svr.Post(any, plain);
    svr.Put(any, with_reader);
    svr.Put(any, plain);
    svr.Patch(any, with_reader);
    svr.Patch(any, plain);
    svr.Delete(any, with_reader);
    svr.Delete(any, plain);
    // Errors httplib raises itself (bad request line, GET body over the cap, unknown method).
    svr.set_error_handler([](const httplib::Request&, httplib::Response& res) {
        if (res.body.empty())
            res.set_content(error_json(res.status, "HTTP error " + std::to_string(res.status)),
                            "application/json");
    });

    int bound;
    if (port == 0) {
        bound = svr.bind_to_any_port(host);
        FORGE_CHECK(bound > 0, "[serve] cannot bind ", host, " to any port");
    } else {
        if (!svr.bind_to_port(host, port))
            throw Error(detail::str_cat("[serve] cannot listen on ", host, ":", port),
                        "is another server using the port? pick another with --port");
        bound = port;
    }
    t->port = bound;
    t->running = true;
    t->thread = std::thread([t] {
        t->svr.listen_after_bind();
        std::lock_guard<std::mutex> lk(t->mu);
        t->stopped = true;
        t->cv.notify_all();
    });
    while (!svr.is_running() && t->running) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return bound;
}

void App::listen(const std::string& host, int port, const ListenOptions& opts) {
    start(host, port, opts);
    Transport* t = transport_.get();
    std::unique_lock<std::mutex> lk(t->mu);
    t->cv.wait(lk, [t] { return t->stopped; });
}

int App::port() const { return transport_ && transport_->running ? transport_->port.load() : 0; }
bool App::running() const { return transport_ && transport_->running; }
int64_t App::in_flight() const { return transport_ ? transport_->in_flight.load() : 0; }

void App::stop(double drain_s) {
    if (!transport_ || !transport_->running.exchange(false)) return;
    Transport* t = transport_.get();
    t->svr.stop(); // no new connections; keep-alive loops end after their current request
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(drain_s));
    while (t->in_flight > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t->closing = true; // streams still open see the client as gone and end
    if (t->thread.joinable()) t->thread.join();
}

} // namespace forge::serve
