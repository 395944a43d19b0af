// Router and App's in-process side (include/forge/serve/app.h): pattern matching, the
// middleware onion, mounting, error handlers. The socket side is transport.cpp.
#include <forge/serve/app.h>

#include <utility>

namespace forge::serve {

namespace {

std::vector<std::string> split_path(std::string_view p) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < p.size()) {
        size_t j = p.find('/', i);
        if (j == std::string_view::npos) j = p.size();
        if (j > i) out.emplace_back(p.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

std::string join_path(const std::string& a, const std::string& b) {
    std::string out = a;
    while (!out.empty() && out.back() == '/') out.pop_back();
    if (b.empty() || b[0] != '/') out += '/';
    out += b;
    return out.empty() ? "/" : out;
}

enum class Kind { middleware, route, router };

struct Layer {
    Kind kind;
    std::string method; // routes: "" = any
    std::string pattern;
    std::vector<std::string> segs;
    Middleware mw;
    Handler handler;
    std::shared_ptr<Router> sub;
};

// Full match of a route pattern against path segments; fills params.
bool match_route(const std::vector<std::string>& pat, const std::vector<std::string>& path,
                 std::map<std::string, std::string>& params) {
    std::map<std::string, std::string> got;
    size_t i = 0;
    for (; i < pat.size(); ++i) {
        const std::string& s = pat[i];
        if (s == "*" && i + 1 == pat.size()) {
            std::string rest;
            for (size_t k = i; k < path.size(); ++k) rest += (k > i ? "/" : "") + path[k];
            got["*"] = rest;
            for (auto& [k, v] : got) params[k] = v;
            return true;
        }
        if (i >= path.size()) return false;
        if (s.size() > 1 && s[0] == ':') got[s.substr(1)] = path[i];
        else if (s != path[i]) return false;
    }
    if (i != path.size()) return false;
    for (auto& [k, v] : got) params[k] = v;
    return true;
}

bool match_prefix(const std::vector<std::string>& pre, const std::vector<std::string>& path) {
    if (pre.size() > path.size()) return false;
    for (size_t i = 0; i < pre.size(); ++i)
        if (pre[i] != path[i]) return false;
    return true;
}

} // namespace

struct Router::Impl {
    std::vector<Layer> layers;
    std::vector<ErrorHandler> error_handlers;
    bool root = false;

    Response on_exception(Request& req, const std::exception_ptr& e) const {
        for (auto& h : error_handlers) {
            try {
                if (auto r = h(req, e)) return std::move(*r);
            } catch (...) {
                return error_response(std::current_exception());
            }
        }
        if (root) return error_response(e);
        std::rethrow_exception(e);
    }

    Response run(size_t i, Request& req, const Next& out) const {
        const auto path = split_path(req.path);
        for (; i < layers.size(); ++i) {
            const Layer& L = layers[i];
            if (L.kind == Kind::route) {
                std::map<std::string, std::string> params;
                if (!match_route(L.segs, path, params)) continue;
                const bool method_ok = L.method.empty() || L.method == req.method ||
                                       (req.method == "HEAD" && L.method == "GET");
                if (!method_ok) {
                    std::string& allow = req.locals["allow"];
                    if (allow.find(L.method) == std::string::npos)
                        allow += (allow.empty() ? "" : ", ") + L.method;
                    continue;
                }
                req.locals.erase("allow");
                for (auto& [k, v] : params) req.params[k] = v;
                req.route = join_path(req.base_path, L.pattern);
                try {
                    return L.handler(req);
                } catch (...) {
                    return on_exception(req, std::current_exception());
                }
            }
            if (!match_prefix(L.segs, path)) continue;
            const size_t next_i = i + 1;
            if (L.kind == Kind::middleware) {
                Next next = [this, next_i, &out](Request& r) { return run(next_i, r, out); };
                try {
                    return L.mw(req, next);
                } catch (...) {
                    return on_exception(req, std::current_exception());
                }
            }
            // A mounted router: it sees the path below its prefix.
            const std::string saved_path = req.path, saved_base = req.base_path;
            std::string rest;
            for (size_t k = L.segs.size(); k < path.size(); ++k) rest += "/" + path[k];
            req.path = rest.empty() ? "/" : rest;
            req.base_path = join_path(saved_base, L.pattern);
            if (req.base_path == "/") req.base_path.clear();
            Next cont = [this, next_i, &out, saved_path, saved_base](Request& r) {
                r.path = saved_path;
                r.base_path = saved_base;
                return run(next_i, r, out);
            };
            try {
                Response res = L.sub->dispatch(req, cont);
                req.path = saved_path;
                req.base_path = saved_base;
                return res;
            } catch (...) {
                req.path = saved_path;
                req.base_path = saved_base;
                return on_exception(req, std::current_exception());
            }
        }
        try {
            return out(req);
        } catch (...) {
            return on_exception(req, std::current_exception());
        }
    }
};

Router::Router() : impl_(std::make_shared<Impl>()) {}
Router::Router(const Router& o) : impl_(std::make_shared<Impl>(*o.impl_)) {}
Router& Router::operator=(const Router& o) {
    if (this != &o) impl_ = std::make_shared<Impl>(*o.impl_);
    return *this;
}
Router::Router(Router&&) noexcept = default;
Router& Router::operator=(Router&&) noexcept = default;
Router::~Router() = default;

Router& Router::use(Middleware mw) { return use("/", std::move(mw)); }

Router& Router::use(const std::string& prefix, Middleware mw) {
    FORGE_CHECK(static_cast<bool>(mw), "[serve] use(", prefix, "): empty middleware");
    impl_->layers.push_back({Kind::middleware, "", prefix, split_path(prefix), std::move(mw), {}, {}});
    return *this;
}

Router& Router::use(const std::string& prefix, Router router) {
    impl_->layers.push_back({Kind::router, "", prefix, split_path(prefix), {}, {},
                             std::make_shared<Router>(std::move(router))});
    return *this;
}

Router& Router::route(const std::string& method, const std::string& pattern, Handler h) {
    FORGE_CHECK(static_cast<bool>(h), "[serve] ", method, " ", pattern, ": empty handler");
    FORGE_CHECK(!pattern.empty() && pattern[0] == '/', "[serve] route pattern '", pattern,
                "' must start with '/'");
    auto segs = split_path(pattern);
    for (size_t i = 0; i < segs.size(); ++i) {
        FORGE_CHECK(segs[i] != ":", "[serve] route pattern '", pattern,
                    "' has a parameter without a name");
        FORGE_CHECK(segs[i] != "*" || i + 1 == segs.size(), "[serve] route pattern '", pattern,
                    "': '*' must be the last segment");
    }
    impl_->layers.push_back({Kind::route, method, pattern, std::move(segs), {}, std::move(h), {}});
    return *this;
}

Router& Router::get(const std::string& p, Handler h) { return route("GET", p, std::move(h)); }
Router& Router::post(const std::string& p, Handler h) { return route("POST", p, std::move(h)); }
Router& Router::put(const std::string& p, Handler h) { return route("PUT", p, std::move(h)); }
Router& Router::del(const std::string& p, Handler h) { return route("DELETE", p, std::move(h)); }
Router& Router::patch(const std::string& p, Handler h) { return route("PATCH", p, std::move(h)); }
Router& Router::all(const std::string& p, Handler h) { return route("", p, std::move(h)); }

Router& Router::on_error(ErrorHandler h) {
    impl_->error_handlers.push_back(std::move(h));
    return *this;
}

Response Router::dispatch(Request& req, const Next& fallthrough) const {
    return impl_->run(0, req, fallthrough);
}

// ---------------------------------------------------------------- App (in-process part)

App& App::use(Middleware mw) { root_.use(std::move(mw)); return *this; }
App& App::use(const std::string& prefix, Middleware mw) {
    root_.use(prefix, std::move(mw));
    return *this;
}
App& App::use(const std::string& prefix, Router router) {
    root_.use(prefix, std::move(router));
    return *this;
}
App& App::get(const std::string& p, Handler h) { root_.get(p, std::move(h)); return *this; }
App& App::post(const std::string& p, Handler h) { root_.post(p, std::move(h)); return *this; }
App& App::put(const std::string& p, Handler h) { root_.put(p, std::move(h)); return *this; }
App& App::del(const std::string& p, Handler h) { root_.del(p, std::move(h)); return *this; }
App& App::patch(const std::string& p, Handler h) { root_.patch(p, std::move(h)); return *this; }
App& App::all(const std::string& p, Handler h) { root_.all(p, std::move(h)); return *this; }
App& App::on_error(ErrorHandler h) { root_.on_error(std::move(h)); return *this; }
Router& App::router() { return root_; }

void mark_root(Router& r) { r.impl_->root = true; }

Response App::handle(Request req) const {
    const Next not_found = [](Request& r) -> Response {
        if (r.body_truncated)
            throw HttpError(413,
                            detail::str_cat("the request body (", r.content_length,
                                            " bytes) is over the server's buffer limit"),
                            "invalid_request_error", "", "request_too_large");
        auto allow = r.locals.find("allow");
        if (allow != r.locals.end() && !allow->second.empty()) {
            HttpError e(405, "Method " + r.method + " is not allowed on " + r.path,
                        "invalid_request_error", "", "method_not_allowed");
            e.headers["allow"] = allow->second;
            throw e;
        }
        throw HttpError(404, "Unknown request URL: " + r.method + " " + r.base_path + r.path,
                        "invalid_request_error", "", "unknown_url");
    };
    try {
        return root_.dispatch(req, not_found);
    } catch (...) {
        return error_response(std::current_exception());
    }
}

} // namespace forge::serve
