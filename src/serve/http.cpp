// Request, Response, SseWriter, HttpError and the JSON view (include/forge/serve/http.h).
// nlohmann::json stays in this file and the other serve .cpp files.
#include <forge/serve/http.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <strings.h>

#include <nlohmann/json.hpp>

#include "json_node.h"

namespace forge::serve {

using nlohmann::json;

bool CaseInsensitiveLess::operator()(const std::string& a, const std::string& b) const {
    return ::strcasecmp(a.c_str(), b.c_str()) < 0;
}

namespace {
std::string default_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}
} // namespace

HttpError::HttpError(int status, std::string message, std::string type, std::string param,
                     std::string code)
    : Error(std::move(message)), status_(status),
      type_(type.empty() ? default_type(status) : std::move(type)), param_(std::move(param)),
      code_(std::move(code)) {}

// ---------------------------------------------------------------- JSON

namespace {
const json& node_json(const JsonView::Node* n) { return *reinterpret_cast<const json*>(n); }
const JsonView::Node* as_node(const json* j) { return reinterpret_cast<const JsonView::Node*>(j); }
const json& null_json() {
    static const json n;
    return n;
}
std::string type_name(const json& j) {
    if (j.is_number_integer()) return "integer";
    return j.type_name();
}
} // namespace

const nlohmann::json& detail_json(const JsonView& v) {
    return v.node() ? node_json(v.node()) : null_json();
}

JsonView::JsonView() = default;
JsonView::JsonView(std::shared_ptr<const void> root, const Node* node)
    : root_(std::move(root)), node_(node) {}

bool JsonView::is_null() const { return detail_json(*this).is_null(); }
bool JsonView::is_object() const { return detail_json(*this).is_object(); }
bool JsonView::is_array() const { return detail_json(*this).is_array(); }
bool JsonView::is_string() const { return detail_json(*this).is_string(); }
bool JsonView::is_number() const { return detail_json(*this).is_number(); }
bool JsonView::is_integer() const {
    const json& j = detail_json(*this);
    if (j.is_number_integer()) return true;
    if (j.is_number_float()) {
        // Range first: converting an out-of-range double to int64 is undefined.
        const double d = j.get<double>();
        return std::isfinite(d) && std::abs(d) < 9.2e18 && d == std::trunc(d);
    }
    return false;
}
bool JsonView::is_bool() const { return detail_json(*this).is_boolean(); }

JsonView JsonView::operator[](std::string_view key) const {
    const json& j = detail_json(*this);
    if (!j.is_object()) return JsonView(root_, nullptr);
    auto it = j.find(std::string(key));
    return it == j.end() ? JsonView(root_, nullptr) : JsonView(root_, as_node(&*it));
}
JsonView JsonView::at(size_t i) const {
    const json& j = detail_json(*this);
    if (!j.is_array() || i >= j.size()) return JsonView(root_, nullptr);
    return JsonView(root_, as_node(&j[i]));
}
bool JsonView::contains(std::string_view key) const {
    const json& j = detail_json(*this);
    return j.is_object() && j.contains(std::string(key));
}
size_t JsonView::size() const {
    const json& j = detail_json(*this);
    return j.is_array() || j.is_object() ? j.size() : 0;
}
std::vector<std::string> JsonView::keys() const {
    std::vector<std::string> out;
    const json& j = detail_json(*this);
    if (j.is_object())
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(it.key());
    return out;
}
std::string JsonView::str(std::string_view what) const {
    const json& j = detail_json(*this);
    if (!j.is_string())
        throw HttpError(400, detail::str_cat("'", what, "' must be a string, got ", type_name(j)),
                        "invalid_request_error", std::string(what));
    return j.get<std::string>();
}
double JsonView::num(std::string_view what) const {
    const json& j = detail_json(*this);
    if (!j.is_number())
        throw HttpError(400, detail::str_cat("'", what, "' must be a number, got ", type_name(j)),
                        "invalid_request_error", std::string(what));
    return j.get<double>();
}
int64_t JsonView::integer(std::string_view what) const {
    if (!is_integer())
        throw HttpError(400,
                        detail::str_cat("'", what, "' must be an integer, got ",
                                        type_name(detail_json(*this))),
                        "invalid_request_error", std::string(what));
    const json& j = detail_json(*this);
    if (j.is_number_float()) return int64_t(j.get<double>());
    if (j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(INT64_MAX))
        throw HttpError(400, detail::str_cat("'", what, "' is too large"), "invalid_request_error",
                        std::string(what));
    return j.get<int64_t>();
}
bool JsonView::boolean(std::string_view what) const {
    const json& j = detail_json(*this);
    if (!j.is_boolean())
        throw HttpError(400, detail::str_cat("'", what, "' must be a boolean, got ", type_name(j)),
                        "invalid_request_error", std::string(what));
    return j.get<bool>();
}
std::string JsonView::dump() const { return detail_json(*this).dump(); }

JsonView parse_json(std::string_view text) {
    auto doc = std::make_shared<json>();
    try {
        // Depth is bounded by nlohmann's recursion; cap it so hostile nesting cannot blow the
        // stack: reject more than 256 open brackets in a row before parsing.
        int depth = 0, max_depth = 0;
        bool in_str = false, esc = false;
        for (char c : text) {
            if (in_str) {
                if (esc) esc = false;
                else if (c == '\\') esc = true;
                else if (c == '"') in_str = false;
            } else if (c == '"') in_str = true;
            else if (c == '[' || c == '{') max_depth = std::max(max_depth, ++depth);
            else if (c == ']' || c == '}') --depth;
        }
        if (max_depth > 256)
            throw HttpError(400, "request body JSON is nested deeper than 256 levels",
                            "invalid_request_error");
        *doc = json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
        throw HttpError(400,
                        std::string("We could not parse the JSON body of your request: ") +
                            e.what(),
                        "invalid_request_error", "", "invalid_json");
    }
    const json* root = doc.get();
    return JsonView(std::shared_ptr<const void>(doc, root), as_node(root));
}

std::string json_quote(std::string_view s) { return json(std::string(s)).dump(); }

// ---------------------------------------------------------------- Request

std::string Request::header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
}

const std::string& Request::param(const std::string& name) const {
    auto it = params.find(name);
    FORGE_ASSERT(it != params.end());
    return it->second;
}

std::optional<std::string> Request::query_param(const std::string& name) const {
    auto it = query.find(name);
    if (it == query.end()) return std::nullopt;
    return it->second;
}

const JsonView& Request::json() const {
    if (!json_) {
        if (body.empty())
            throw HttpError(400, "the request body is empty; expected a JSON object",
                            "invalid_request_error", "", "invalid_json");
        json_ = std::make_shared<JsonView>(parse_json(body));
    }
    return *json_;
}

namespace {
int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
std::string url_decode(std::string_view s, bool plus_space) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() &&
            hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            out += char(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else if (plus_space && s[i] == '+') {
            out += ' ';
        } else {
            out += s[i];
        }
    }
    return out;
}
} // namespace

std::multimap<std::string, std::string> parse_query(std::string_view q) {
    std::multimap<std::string, std::string> out;
    while (!q.empty()) {
        size_t amp = q.find('&');
        std::string_view part = q.substr(0, amp);
        q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
        if (part.empty()) continue;
        size_t eq = part.find('=');
        std::string k = url_decode(part.substr(0, eq), true);
        std::string v = eq == std::string_view::npos ? "" : url_decode(part.substr(eq + 1), true);
        out.emplace(std::move(k), std::move(v));
    }
    return out;
}

std::string decode_path(std::string_view p) { return url_decode(p, false); }

Request Request::make(std::string method, std::string target, std::string body, Headers headers) {
    Request r;
    for (auto& c : method) c = char(std::toupper((unsigned char)c));
    r.method = std::move(method);
    r.target = target;
    size_t q = target.find('?');
    r.path = decode_path(std::string_view(target).substr(0, q));
    if (q != std::string::npos) r.query = parse_query(std::string_view(target).substr(q + 1));
    r.body = std::move(body);
    r.content_length = r.body.size();
    r.headers = std::move(headers);
    r.remote_addr = "in-process";
    return r;
}

// ---------------------------------------------------------------- SSE

SseWriter::SseWriter(std::function<bool(std::string_view)> sink, std::function<bool()> alive)
    : sink_(std::move(sink)), alive_(std::move(alive)) {}

bool SseWriter::write(std::string_view s) {
    if (failed_) return false;
    if (alive_ && !alive_()) {
        failed_ = true;
        return false;
    }
    if (!sink_(s)) {
        failed_ = true;
        return false;
    }
    bytes_ += s.size();
    return true;
}

bool SseWriter::send(std::string_view data, std::string_view event, std::string_view id) {
    std::string out;
    out.reserve(data.size() + 32);
    if (!event.empty()) out.append("event: ").append(event).append("\n");
    if (!id.empty()) out.append("id: ").append(id).append("\n");
    size_t start = 0;
    while (true) {
        size_t nl = data.find('\n', start);
        std::string_view line = data.substr(start, nl == std::string_view::npos ? nl : nl - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        out.append("data: ").append(line).append("\n");
        if (nl == std::string_view::npos) break;
        start = nl + 1;
    }
    out.append("\n");
    return write(out);
}

bool SseWriter::comment(std::string_view text) {
    std::string out = ": ";
    for (char c : text) out += (c == '\n' || c == '\r') ? ' ' : c;
    out += "\n\n";
    return write(out);
}

bool SseWriter::connected() const { return !failed_ && (!alive_ || alive_()); }

// ---------------------------------------------------------------- Response

Response Response::json(std::string json_text, int status) {
    Response r;
    r.status = status;
    r.headers["content-type"] = "application/json";
    r.body = std::move(json_text);
    return r;
}

Response Response::text(std::string text, int status, std::string content_type) {
    Response r;
    r.status = status;
    r.headers["content-type"] = std::move(content_type);
    r.body = std::move(text);
    return r;
}

Response Response::sse(StreamProducer producer) {
    Response r;
    r.headers["content-type"] = "text/event-stream";
    r.headers["cache-control"] = "no-cache";
    r.headers["x-accel-buffering"] = "no";
    r.stream = std::move(producer);
    return r;
}

std::string error_json(int status, std::string_view message, std::string_view type,
                       std::string_view param, std::string_view code) {
    json e = {{"message", std::string(message)},
              {"type", type.empty() ? default_type(status) : std::string(type)},
              {"param", param.empty() ? json(nullptr) : json(std::string(param))},
              {"code", code.empty() ? json(nullptr) : json(std::string(code))}};
    return json{{"error", e}}.dump();
}

Response Response::error(int status, std::string_view message, std::string_view type,
                         std::string_view param, std::string_view code) {
    return json(error_json(status, message, type, param, code), status);
}

std::string Response::collect(std::optional<size_t> max_writes) const {
    if (!stream) return body;
    std::string out;
    size_t n = 0;
    SseWriter w([&](std::string_view s) {
        if (max_writes && n >= *max_writes) return false;
        ++n;
        out.append(s);
        return true;
    });
    run_stream(stream, w);
    return out;
}

Response error_response(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const HttpError& h) {
        Response r = Response::error(h.status(), h.what(), h.type(), h.param(), h.code());
        for (auto& [k, v] : h.headers) r.headers[k] = v;
        return r;
    } catch (const InvalidArgument& a) {
        return Response::error(400, a.what(), "invalid_request_error");
    } catch (const NotFound& a) {
        return Response::error(404, a.what(), "not_found_error");
    } catch (const std::exception& x) {
        return Response::error(500, std::string("internal server error: ") + x.what(),
                               "server_error");
    } catch (...) {
        return Response::error(500, "internal server error", "server_error");
    }
}

void run_stream(const StreamProducer& producer, SseWriter& w) {
    try {
        producer(w);
    } catch (...) {
        Response r = error_response(std::current_exception());
        w.send(r.body, "error");
    }
}

} // namespace forge::serve
