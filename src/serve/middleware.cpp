// The built-in middleware and the Prometheus registry (include/forge/serve/middleware.h).
#include <forge/serve/middleware.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <forge/core/device.h>

namespace forge::serve {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- Metrics

namespace {
enum class MetricKind { counter, gauge, histogram };
struct Series {
    double value = 0;               // counter / gauge
    std::vector<uint64_t> buckets;  // histogram: per bucket (not cumulative)
    uint64_t count = 0;
    double sum = 0;
};
struct Family {
    MetricKind kind = MetricKind::counter;
    std::string help;
    std::vector<double> bounds;
    std::map<Metrics::Labels, Series> series;
};
std::string escape_label(const std::string& v) {
    std::string o;
    for (char c : v) {
        if (c == '\\') o += "\\\\";
        else if (c == '"') o += "\\\"";
        else if (c == '\n') o += "\\n";
        else o += c;
    }
    return o;
}
std::string fmt_num(double v) {
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(int64_t(v));
    char b[64];
    std::snprintf(b, sizeof b, "%.9g", v);
    return b;
}
std::string label_str(const Metrics::Labels& l, const std::string& extra_k = {},
                      const std::string& extra_v = {}) {
    std::string o;
    for (auto& [k, v] : l) o += (o.empty() ? "" : ",") + k + "=\"" + escape_label(v) + "\"";
    if (!extra_k.empty()) o += (o.empty() ? "" : ",") + extra_k + "=\"" + extra_v + "\"";
    return o.empty() ? "" : "{" + o + "}";
}
} // namespace

struct Metrics::Impl {
    mutable std::mutex mu;
    std::map<std::string, Family> families;
    std::vector<std::function<void()>> refresh; // run before each render, outside mu
    std::mutex refresh_mu;
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::counter(const std::string& name, const std::string& help) {
    std::lock_guard lk(impl_->mu);
    auto& f = impl_->families[name];
    f.kind = MetricKind::counter;
    f.help = help;
}
void Metrics::gauge(const std::string& name, const std::string& help) {
    std::lock_guard lk(impl_->mu);
    auto& f = impl_->families[name];
    f.kind = MetricKind::gauge;
    f.help = help;
}
void Metrics::histogram(const std::string& name, const std::string& help,
                        std::vector<double> buckets) {
    FORGE_CHECK(std::is_sorted(buckets.begin(), buckets.end()) && !buckets.empty(),
                "[metrics] histogram ", name, " needs ascending buckets");
    std::lock_guard lk(impl_->mu);
    auto& f = impl_->families[name];
    f.kind = MetricKind::histogram;
    f.help = help;
    f.bounds = std::move(buckets);
}
void Metrics::inc(const std::string& name, const Labels& labels, double v) {
    std::lock_guard lk(impl_->mu);
    impl_->families[name].series[labels].value += v;
}
void Metrics::set(const std::string& name, const Labels& labels, double v) {
    std::lock_guard lk(impl_->mu);
    auto& f = impl_->families[name];
    if (f.help.empty()) f.kind = MetricKind::gauge;
    f.series[labels].value = v;
}
void Metrics::observe(const std::string& name, const Labels& labels, double v) {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->families.find(name);
    FORGE_CHECK(it != impl_->families.end() && it->second.kind == MetricKind::histogram,
                "[metrics] ", name, " is not a declared histogram");
    Family& f = it->second;
    Series& s = f.series[labels];
    if (s.buckets.empty()) s.buckets.assign(f.bounds.size() + 1, 0);
    size_t b = std::lower_bound(f.bounds.begin(), f.bounds.end(), v) - f.bounds.begin();
    ++s.buckets[b];
    ++s.count;
    s.sum += v;
}
double Metrics::value(const std::string& name, const Labels& labels) const {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->families.find(name);
    if (it == impl_->families.end()) return 0;
    auto s = it->second.series.find(labels);
    if (s == it->second.series.end()) return 0;
    return it->second.kind == MetricKind::histogram ? double(s->second.count) : s->second.value;
}
void Metrics::on_render(std::function<void()> refresh) {
    std::lock_guard lk(impl_->refresh_mu);
    impl_->refresh.push_back(std::move(refresh));
}
std::string Metrics::render() const {
    {
        std::lock_guard lk(impl_->refresh_mu);
        for (auto& f : impl_->refresh) f();
    }
    std::lock_guard lk(impl_->mu);
    std::ostringstream o;
    for (auto& [name, f] : impl_->families) {
        if (!f.help.empty()) o << "# HELP " << name << " " << f.help << "\n";
        o << "# TYPE " << name << " "
          << (f.kind == MetricKind::counter ? "counter"
              : f.kind == MetricKind::gauge ? "gauge"
                                            : "histogram")
          << "\n";
        for (auto& [labels, s] : f.series) {
            if (f.kind != MetricKind::histogram) {
                o << name << label_str(labels) << " " << fmt_num(s.value) << "\n";
                continue;
            }
            uint64_t cum = 0;
            for (size_t b = 0; b <= f.bounds.size(); ++b) {
                cum += s.buckets[b];
                const double le = b < f.bounds.size() ? f.bounds[b] : INFINITY;
                o << name << "_bucket" << label_str(labels, "le", fmt_num(le)) << " " << cum
                  << "\n";
            }
            o << name << "_sum" << label_str(labels) << " " << fmt_num(s.sum) << "\n";
            o << name << "_count" << label_str(labels) << " " << s.count << "\n";
        }
    }
    return o.str();
}

void add_gpu_memory_metrics(Metrics& m, int device) {
    m.gauge("forge_gpu_memory_allocated_bytes", "GPU memory held by live tensors");
    m.gauge("forge_gpu_memory_reserved_bytes",
            "GPU memory the caching allocator holds (allocated + cached free blocks)");
    m.gauge("forge_gpu_memory_peak_bytes", "Most GPU memory allocated at once since start");
    m.on_render([&m, device] {
        const cuda::MemoryStats s = cuda::memory_stats(device);
        const Metrics::Labels l = {{"device", std::to_string(device)}};
        m.set("forge_gpu_memory_allocated_bytes", l, double(s.allocated));
        m.set("forge_gpu_memory_reserved_bytes", l, double(s.reserved));
        m.set("forge_gpu_memory_peak_bytes", l, double(s.peak));
    });
}

namespace mw {

namespace {

bool is_hex(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
}

// W3C trace-context: version-traceid-parentid-flags, lower-case hex, ids not all zero.
bool valid_traceparent(const std::string& tp) {
    if (tp.size() < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return false;
    const std::string_view v(tp);
    const auto ver = v.substr(0, 2), trace = v.substr(3, 32), parent = v.substr(36, 16),
               flags = v.substr(53, 2);
    if (!is_hex(ver) || ver == "ff" || !is_hex(trace) || !is_hex(parent) || !is_hex(flags))
        return false;
    if (ver == "00" && tp.size() != 55) return false;
    if (trace.find_first_not_of('0') == std::string_view::npos) return false;
    if (parent.find_first_not_of('0') == std::string_view::npos) return false;
    return true;
}

std::string random_hex(size_t n) {
    thread_local std::mt19937_64 rng(std::random_device{}() ^
                                     uint64_t(Clock::now().time_since_epoch().count()));
    static const char* d = "0123456789abcdef";
    std::string s(n, '0');
    for (auto& c : s) c = d[rng() & 15];
    return s;
}

bool valid_request_id(const std::string& id) {
    if (id.empty() || id.size() > 128) return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.' || c == ':';
    });
}

// Runs `on_done(res, bytes)` when the response is finished: now, or after its stream.
Response finish_after(Response res, std::function<void(const Response&, uint64_t)> on_done) {
    if (!res.is_stream()) {
        on_done(res, res.body.size());
        return res;
    }
    auto inner = std::move(res.stream);
    auto status = res.status;
    auto headers = res.headers;
    res.stream = [inner, on_done, status, headers](SseWriter& w) {
        struct Guard {
            std::function<void()> f;
            ~Guard() { f(); }
        } g{[&] {
            Response view;
            view.status = status;
            view.headers = headers;
            on_done(view, w.bytes_written());
        }};
        run_stream(inner, w);
    };
    return res;
}

std::string iso_now() {
    auto now = std::chrono::system_clock::now();
    auto t = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char b[96]; // room for any int the compiler assumes (-Wformat-truncation)
    std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, int(ms.count()));
    return b;
}

std::string local(const Request& r, const char* k) {
    auto it = r.locals.find(k);
    return it == r.locals.end() ? std::string() : it->second;
}

} // namespace

Middleware request_id() {
    return [](Request& req, const Next& next) {
        std::string id = req.header("x-request-id");
        const std::string tp = req.header("traceparent");
        const bool tp_ok = valid_traceparent(tp);
        if (tp_ok) req.locals["trace_id"] = tp.substr(3, 32);
        if (!valid_request_id(id)) id = tp_ok ? tp.substr(3, 32) : "req_" + random_hex(24);
        req.locals["request_id"] = id;
        Response res = next(req);
        res.headers["x-request-id"] = id;
        if (tp_ok) res.headers["traceparent"] = tp;
        return res;
    };
}

Middleware access_log(std::function<void(std::string_view line)> sink) {
    if (!sink) {
        auto mu = std::make_shared<std::mutex>();
        sink = [mu](std::string_view line) {
            std::lock_guard lk(*mu);
            std::fwrite(line.data(), 1, line.size(), stderr);
            std::fputc('\n', stderr);
        };
    }
    return [sink](Request& req, const Next& next) {
        const auto t0 = Clock::now();
        const std::string ts = iso_now(), method = req.method, path = req.base_path + req.path,
                          remote = req.remote_addr;
        Response res = next(req);
        const std::string rid = local(req, "request_id"), tid = local(req, "trace_id"),
                          key = local(req, "api_key_id"),
                          route = req.route.empty() ? "" : req.route;
        return finish_after(std::move(res), [=](const Response& r, uint64_t bytes) {
            nlohmann::json j = {
                {"ts", ts},
                {"request_id", rid},
                {"method", method},
                {"path", path},
                {"route", route},
                {"status", r.status},
                {"ms", std::chrono::duration<double, std::milli>(Clock::now() - t0).count()},
                {"bytes", bytes},
                {"remote", remote},
                {"stream", r.headers.count("content-type") &&
                               r.headers.at("content-type") == "text/event-stream"}};
            if (!tid.empty()) j["trace_id"] = tid;
            if (!key.empty()) j["key"] = key;
            sink(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        });
    };
}

Middleware cors(CorsOptions opts) {
    return [opts](Request& req, const Next& next) {
        const std::string origin = req.header("origin");
        std::string allow;
        if (!origin.empty()) {
            for (auto& o : opts.origins)
                if (o == "*" || o == origin) allow = (o == "*") ? "*" : origin;
        }
        if (req.method == "OPTIONS" && req.has_header("access-control-request-method")) {
            Response res;
            res.status = 204;
            if (!allow.empty()) {
                res.headers["access-control-allow-origin"] = allow;
                res.headers["access-control-allow-methods"] = opts.methods;
                res.headers["access-control-allow-headers"] = opts.headers;
                res.headers["access-control-max-age"] = std::to_string(opts.max_age_s);
            }
            if (allow != "*") res.headers["vary"] = "Origin";
            return res;
        }
        Response res = next(req);
        if (!allow.empty()) {
            res.headers["access-control-allow-origin"] = allow;
            res.headers["access-control-expose-headers"] = opts.expose;
            if (allow != "*") res.headers["vary"] = "Origin";
        }
        return res;
    };
}

Middleware body_limit(uint64_t max_bytes) {
    return [max_bytes](Request& req, const Next& next) {
        const uint64_t n = std::max<uint64_t>(req.content_length, req.body.size());
        if (n > max_bytes || (req.body_truncated && n == 0))
            throw HttpError(413,
                            detail::str_cat("Request body too large: ", n,
                                            " bytes; the limit is ", max_bytes, " bytes"),
                            "invalid_request_error", "", "request_too_large");
        return next(req);
    };
}

namespace {
// Equal length and content, in time that depends only on the lengths.
bool ct_equal(std::string_view a, std::string_view b) {
    const size_t n = std::max(a.size(), b.size());
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? (unsigned char)a[i] : 0;
        const unsigned char y = i < b.size() ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}
} // namespace

Middleware api_keys(ApiKeyOptions opts) {
    return [opts](Request& req, const Next& next) {
        if (opts.keys.empty() || req.method == "OPTIONS" ||
            std::find(opts.open_paths.begin(), opts.open_paths.end(), req.base_path + req.path) !=
                opts.open_paths.end())
            return next(req);
        const std::string auth = req.header("authorization");
        std::string token;
        if (auth.size() > 7 && ::strncasecmp(auth.c_str(), "bearer ", 7) == 0) token = auth.substr(7);
        while (!token.empty() && token.front() == ' ') token.erase(0, 1);
        while (!token.empty() && token.back() == ' ') token.pop_back();
        int found = -1;
        for (size_t i = 0; i < opts.keys.size(); ++i) // no early exit: time independent of match
            if (ct_equal(token, opts.keys[i]) && found < 0) found = int(i);
        if (found < 0) {
            HttpError e(401,
                        token.empty()
                            ? "You didn't provide an API key. You need to provide your API key in "
                              "an Authorization header using Bearer auth (i.e. Authorization: "
                              "Bearer YOUR_KEY)."
                            : "Incorrect API key provided.",
                        "invalid_request_error", "", "invalid_api_key");
            e.headers["www-authenticate"] = "Bearer";
            throw e;
        }
        req.locals["api_key_id"] = "key-" + std::to_string(found);
        return next(req);
    };
}

std::vector<std::string> load_api_keys(const std::vector<std::string>& flags,
                                       const std::string& env_var, const std::string& file) {
    std::vector<std::string> keys;
    auto add = [&](std::string k) {
        while (!k.empty() && std::isspace((unsigned char)k.back())) k.pop_back();
        while (!k.empty() && std::isspace((unsigned char)k.front())) k.erase(0, 1);
        if (!k.empty() && std::find(keys.begin(), keys.end(), k) == keys.end())
            keys.push_back(std::move(k));
    };
    for (auto& k : flags) add(k);
    if (!env_var.empty())
        if (const char* e = std::getenv(env_var.c_str())) {
            std::stringstream ss(e);
            std::string k;
            while (std::getline(ss, k, ',')) add(k);
        }
    if (!file.empty()) {
        std::ifstream in(file);
        if (!in) throw NotFound("[serve] cannot read the API key file " + file);
        std::string line;
        while (std::getline(in, line))
            if (line.find_first_not_of(" \t") != std::string::npos &&
                line[line.find_first_not_of(" \t")] != '#')
                add(line);
    }
    return keys;
}

Middleware rate_limit(RateLimitOptions opts) {
    FORGE_CHECK(opts.requests_per_minute > 0 && opts.burst >= 1,
                "[serve] rate_limit needs requests_per_minute > 0 and burst >= 1");
    struct Bucket {
        double tokens;
        Clock::time_point last;
    };
    struct State {
        std::mutex mu;
        std::unordered_map<std::string, Bucket> buckets;
        uint64_t calls = 0;
    };
    auto st = std::make_shared<State>();
    if (opts.metrics)
        opts.metrics->counter("forge_rate_limited_total", "Requests rejected by the rate limit");
    return [opts, st](Request& req, const Next& next) {
        const std::string path = req.base_path + req.path;
        if (std::find(opts.open_paths.begin(), opts.open_paths.end(), path) != opts.open_paths.end())
            return next(req);
        auto k = req.locals.find("api_key_id");
        const std::string who = k != req.locals.end() ? k->second : "addr:" + req.remote_addr;
        const double rate = opts.requests_per_minute / 60.0; // tokens per second
        double wait_s = 0;
        double remaining = 0;
        {
            std::lock_guard lk(st->mu);
            const auto now = Clock::now();
            if (++st->calls % 1024 == 0) // forget buckets that have refilled completely
                for (auto it = st->buckets.begin(); it != st->buckets.end();) {
                    const double t = std::chrono::duration<double>(now - it->second.last).count();
                    it = it->second.tokens + t * rate >= opts.burst ? st->buckets.erase(it)
                                                                    : std::next(it);
                }
            auto [it, fresh] = st->buckets.try_emplace(who, Bucket{opts.burst, now});
            Bucket& b = it->second;
            const double dt = std::chrono::duration<double>(now - b.last).count();
            b.tokens = std::min(opts.burst, b.tokens + dt * rate);
            b.last = now;
            if (b.tokens >= 1) b.tokens -= 1;
            else wait_s = (1 - b.tokens) / rate;
            remaining = b.tokens;
        }
        if (wait_s > 0) {
            if (opts.metrics) opts.metrics->inc("forge_rate_limited_total");
            const auto retry = std::to_string(int64_t(std::ceil(wait_s)));
            HttpError e(429,
                        "Rate limit reached for requests: limit " +
                            std::to_string(int64_t(opts.requests_per_minute)) +
                            " per minute. Please try again in " + retry + "s.",
                        "requests", "", "rate_limit_exceeded");
            e.headers["retry-after"] = retry;
            e.headers["x-ratelimit-limit-requests"] =
                std::to_string(int64_t(opts.requests_per_minute));
            e.headers["x-ratelimit-remaining-requests"] = "0";
            throw e;
        }
        Response res = next(req);
        res.headers["x-ratelimit-limit-requests"] =
            std::to_string(int64_t(opts.requests_per_minute));
        res.headers["x-ratelimit-remaining-requests"] = std::to_string(int64_t(remaining));
        return res;
    };
}

Middleware metrics(std::shared_ptr<Metrics> reg) {
    FORGE_CHECK(reg != nullptr, "[serve] metrics() needs a registry");
    reg->counter("forge_http_requests_total", "HTTP requests by method, route and status");
    reg->histogram("forge_http_request_duration_seconds",
                   "Time from request to the end of the response (streams included)",
                   {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
    return [reg](Request& req, const Next& next) {
        if (req.method == "GET" && req.base_path + req.path == "/metrics") {
            return Response::text(reg->render(), 200, "text/plain; version=0.0.4; charset=utf-8");
        }
        const auto t0 = Clock::now();
        const std::string method = req.method;
        Response res = next(req);
        const std::string route = req.route.empty() ? "unmatched" : req.route;
        return finish_after(std::move(res), [=](const Response& r, uint64_t) {
            reg->inc("forge_http_requests_total",
                     {{"method", method}, {"route", route}, {"status", std::to_string(r.status)}});
            reg->observe("forge_http_request_duration_seconds", {{"route", route}},
                         std::chrono::duration<double>(Clock::now() - t0).count());
        });
    };
}

} // namespace mw
} // namespace forge::serve
