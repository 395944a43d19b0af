// The HTTP values of Forge's app layer: Request, Response (plain or a server-sent-event
// stream), HttpError and a read-only JSON view of request bodies. Transport-free: the same
// objects flow through App::handle() in-process and through the cpp-httplib server.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <forge/core/error.h>

namespace forge::serve {

/// Header names compare case-insensitively (RFC 9110).
struct CaseInsensitiveLess {
    bool operator()(const std::string& a, const std::string& b) const;
};
using Headers = std::map<std::string, std::string, CaseInsensitiveLess>;

/// An error with an HTTP status and OpenAI's error fields; error middleware turns it into
/// {"error": {"message", "type", "param", "code"}}.
class HttpError : public Error {
  public:
    HttpError(int status, std::string message, std::string type = {}, std::string param = {},
              std::string code = {});
    int status() const { return status_; }
    const std::string& type() const { return type_; }
    const std::string& param() const { return param_; }
    const std::string& code() const { return code_; }
    /// Extra response headers (e.g. retry-after on 429).
    Headers headers;

  private:
    int status_;
    std::string type_, param_, code_;
};

/// Read-only view into a parsed JSON document (the request body). Missing keys and
/// out-of-range indexes give a null view, so `req.json()["a"]["b"].is_null()` is safe.
class JsonView {
  public:
    struct Node;
    JsonView();
    JsonView(std::shared_ptr<const void> root, const Node* node);

    bool is_null() const;
    bool is_object() const;
    bool is_array() const;
    bool is_string() const;
    bool is_number() const;
    bool is_integer() const;
    bool is_bool() const;
    /// Object member or null view.
    JsonView operator[](std::string_view key) const;
    /// Array element or null view.
    JsonView at(size_t i) const;
    bool contains(std::string_view key) const;
    /// Elements of an array, members of an object, else 0.
    size_t size() const;
    std::vector<std::string> keys() const;
    /// Typed reads; throw HttpError 400 naming `what` when the type differs.
    std::string str(std::string_view what = "value") const;
    double num(std::string_view what = "value") const;
    int64_t integer(std::string_view what = "value") const;
    bool boolean(std::string_view what = "value") const;
    /// Serialized JSON of this node.
    std::string dump() const;
    /// For the library's own .cpp files (an nlohmann::json*).
    const Node* node() const { return node_; }

  private:
    std::shared_ptr<const void> root_; // keeps the document alive
    const Node* node_ = nullptr;
};

/// Parses `text`; throws HttpError 400 (invalid_request_error) on malformed JSON.
JsonView parse_json(std::string_view text);
/// `s` as a JSON string literal, quotes included.
std::string json_quote(std::string_view s);

struct Request {
    std::string method = "GET"; ///< upper case
    std::string path = "/";     ///< decoded path, no query; relative to a router's mount point
    std::string base_path;      ///< the mount prefix stripped from path ("" at the root)
    std::string target;         ///< the original request target (path + query)
    std::multimap<std::string, std::string> query; ///< decoded query parameters
    std::map<std::string, std::string> params;     ///< route parameters (":id")
    Headers headers;
    std::string body;
    std::string remote_addr;
    /// Bytes the client sent in the body; more than body.size() when the transport dropped a
    /// body over its buffer cap (body_truncated).
    uint64_t content_length = 0;
    bool body_truncated = false;
    /// The matched route pattern, full path ("/v1/models/:id"); empty until routed.
    std::string route;
    /// Per-request values middleware hands on ("request_id", "api_key_id", "trace_id").
    std::map<std::string, std::string> locals;
    /// The transport's liveness probe (in-process: always true).
    std::function<bool()> connected_probe;

    /// A header value or "".
    std::string header(const std::string& name) const;
    bool has_header(const std::string& name) const { return headers.count(name) > 0; }
    /// A route parameter; throws InternalError if the route has no such parameter.
    const std::string& param(const std::string& name) const;
    /// The first query value of `name`, or none.
    std::optional<std::string> query_param(const std::string& name) const;
    /// The body parsed as JSON once (cached); throws HttpError 400 when it is not JSON.
    const JsonView& json() const;
    /// False once the transport saw the client go away.
    bool connected() const { return !connected_probe || connected_probe(); }

    /// Builds a request in-process: target may hold a query ("/x?a=1").
    static Request make(std::string method, std::string target, std::string body = {},
                        Headers headers = {});

  private:
    mutable std::shared_ptr<JsonView> json_;
};

/// Writes server-sent events (text/event-stream). Each call returns false once the client is
/// gone (a write failed or the transport saw it disconnect); producers should then return.
class SseWriter {
  public:
    /// sink writes raw bytes and returns false on failure; alive (optional) probes the client.
    SseWriter(std::function<bool(std::string_view)> sink, std::function<bool()> alive = {});
    /// `data: ...` lines (multi-line data split on '\n'), with optional `event:` and `id:`.
    bool send(std::string_view data, std::string_view event = {}, std::string_view id = {});
    /// A `: comment` line: a heartbeat that clients ignore.
    bool comment(std::string_view text);
    bool connected() const;
    uint64_t bytes_written() const { return bytes_; }

  private:
    bool write(std::string_view s);
    std::function<bool(std::string_view)> sink_;
    std::function<bool()> alive_;
    bool failed_ = false;
    uint64_t bytes_ = 0;
};

/// Produces a streamed body. Exceptions it throws become an SSE `error` event.
using StreamProducer = std::function<void(SseWriter&)>;

struct Response {
    int status = 200;
    Headers headers;
    std::string body;
    /// Set for streamed (SSE) responses: the transport runs it after sending the headers.
    StreamProducer stream;

    bool is_stream() const { return static_cast<bool>(stream); }
    /// application/json with `json_text` as the body.
    static Response json(std::string json_text, int status = 200);
    static Response text(std::string text, int status = 200,
                         std::string content_type = "text/plain; charset=utf-8");
    /// text/event-stream; `producer` writes the events.
    static Response sse(StreamProducer producer);
    /// OpenAI's error object. Empty type: derived from the status.
    static Response error(int status, std::string_view message, std::string_view type = {},
                          std::string_view param = {}, std::string_view code = {});

    /// Runs a stream producer into a string (in-process tests): the bytes a client would read.
    /// `max_events`: the sink fails after that many writes (simulates a disconnect).
    std::string collect(std::optional<size_t> max_writes = {}) const;
};

/// The OpenAI error JSON for status/message/...; type "" picks the usual one for the status.
std::string error_json(int status, std::string_view message, std::string_view type = {},
                       std::string_view param = {}, std::string_view code = {});
/// The response an exception maps to: HttpError as given, InvalidArgument 400, NotFound 404,
/// anything else 500 (message "internal server error: ..."). The default error middleware.
Response error_response(const std::exception_ptr& e);
/// Runs `producer` over `sink`, turning an exception into an SSE `error` event.
void run_stream(const StreamProducer& producer, SseWriter& w);

} // namespace forge::serve
