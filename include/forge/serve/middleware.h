// The built-in middleware (forge::mw): request id + W3C traceparent, JSON-lines access log,
// CORS, body size limit, API-key auth, per-key token-bucket rate limit, Prometheus metrics.
// Each is a plain Middleware value: app.use(mw::request_id()).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <forge/serve/app.h>

namespace forge::serve {

/// A small Prometheus registry (text exposition format 0.0.4). Thread-safe.
class Metrics {
  public:
    using Labels = std::vector<std::pair<std::string, std::string>>;
    Metrics();
    ~Metrics();
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    void counter(const std::string& name, const std::string& help);
    void gauge(const std::string& name, const std::string& help);
    /// `buckets`: ascending upper bounds (+Inf is added).
    void histogram(const std::string& name, const std::string& help, std::vector<double> buckets);
    /// Adds v to a counter (declared or not: undeclared names are created as counters).
    void inc(const std::string& name, const Labels& labels = {}, double v = 1);
    void set(const std::string& name, const Labels& labels, double v);
    void observe(const std::string& name, const Labels& labels, double v);
    /// The current value of a counter or gauge series (0 if absent): for tests and /health.
    double value(const std::string& name, const Labels& labels = {}) const;
    /// Runs `refresh` at the start of every render(), for gauges read from elsewhere when
    /// scraped (GPU memory). The hook may call set() on this registry.
    void on_render(std::function<void()> refresh);
    std::string render() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// Gauges of the CUDA caching allocator of `device`, read at each scrape:
/// forge_gpu_memory_{allocated,reserved,peak}_bytes{device="N"} (core/device.h's MemoryStats).
void add_gpu_memory_metrics(Metrics& m, int device);

namespace mw {

/// Sets req.locals["request_id"] from a valid x-request-id header, else the trace id of a valid
/// W3C traceparent, else a random one; echoes x-request-id (and traceparent, when valid) on the
/// response. req.locals["trace_id"] holds the traceparent's trace id.
Middleware request_id();

/// One JSON object per request, written when the response (or its stream) is finished:
/// ts, request_id, trace_id, method, path, route, status, ms, bytes, remote, key.
/// Default sink: stderr.
Middleware access_log(std::function<void(std::string_view line)> sink = {});

struct CorsOptions {
    std::vector<std::string> origins = {"*"}; ///< allowed origins; "*": any
    std::string methods = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
    std::string headers = "authorization, content-type, x-request-id, traceparent";
    std::string expose = "x-request-id, traceparent, retry-after";
    int max_age_s = 600;
};
/// Answers preflight OPTIONS requests (204) and adds access-control-* headers to responses.
Middleware cors(CorsOptions opts = {});

/// 413 with OpenAI's error body when the body is over `max_bytes` (by content_length, so a
/// body the transport dropped counts in full).
Middleware body_limit(uint64_t max_bytes = 4ull << 20);

struct ApiKeyOptions {
    std::vector<std::string> keys;
    /// Paths that need no key (exact match).
    std::vector<std::string> open_paths = {"/health"};
};
/// Authorization: Bearer KEY, compared in constant time against every key. No keys: open.
/// Success sets req.locals["api_key_id"] ("key-<index>"); failure is 401 invalid_api_key.
Middleware api_keys(ApiKeyOptions opts);
/// Keys from flags, the environment variable `env_var` (comma-separated) and a file (one per
/// line, '#' comments), without duplicates. Throws NotFound for a missing file.
std::vector<std::string> load_api_keys(const std::vector<std::string>& flags,
                                       const std::string& env_var = "FORGE_API_KEYS",
                                       const std::string& file = {});

struct RateLimitOptions {
    double requests_per_minute = 60; ///< refill rate
    double burst = 10;               ///< bucket size
    std::vector<std::string> open_paths = {"/health", "/metrics"};
    /// Optional: counts rejections as forge_rate_limited_total.
    std::shared_ptr<Metrics> metrics;
};
/// A token bucket per API key (req.locals["api_key_id"]), or per client address without one.
/// Over the limit: 429 rate_limit_exceeded with retry-after (whole seconds).
Middleware rate_limit(RateLimitOptions opts);

/// Records forge_http_requests_total{method,route,status} and
/// forge_http_request_duration_seconds{route} for every request, and answers GET /metrics.
Middleware metrics(std::shared_ptr<Metrics> registry);

} // namespace mw
} // namespace forge::serve

namespace forge {
namespace mw = serve::mw;
}
