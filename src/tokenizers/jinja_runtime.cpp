// The Jinja interpreter for chat templates: values with Python semantics (truthiness, str(),
// comparisons, slicing), scopes as Jinja has them (a loop's body does not leak `set`, namespaces
// do), the filters, tests, methods and globals real templates call, and limits on steps, output
// and recursion so that no template can hang or exhaust memory.
#include "jinja_ast.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include <forge/core/error.h>

namespace forge::jinja {

// ---------------------------------------------------------------------------------------------
// Values

const Value* Object::find(std::string_view key) const {
    for (const auto& [k, v] : items)
        if (k == key)
            return &v;
    return nullptr;
}
Value* Object::find(std::string_view key) {
    for (auto& [k, v] : items)
        if (k == key)
            return &v;
    return nullptr;
}
void Object::set(const std::string& key, Value v) {
    if (Value* old = find(key))
        *old = std::move(v);
    else
        items.emplace_back(key, std::move(v));
}

bool Value::truthy() const {
    switch (type) {
    case Type::undefined:
    case Type::none:
        return false;
    case Type::boolean:
        return b;
    case Type::integer:
        return i != 0;
    case Type::floating:
        return f != 0;
    case Type::string:
        return !s.empty();
    case Type::array:
        return !arr->empty();
    case Type::object:
        return is_namespace || !obj->items.empty();
    case Type::function:
        return true;
    }
    return false;
}

namespace {

// Python's repr() of a float: shortest digits that round-trip, fixed notation for exponents in
// [-4, 16), else d.ddde+XX.
std::string float_repr(double v) {
    if (std::isnan(v))
        return "nan";
    if (std::isinf(v))
        return v < 0 ? "-inf" : "inf";
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
    std::string sci(buf, r.ptr);
    bool neg = sci[0] == '-';
    if (neg)
        sci.erase(0, 1);
    std::size_t e = sci.find('e');
    std::string digits = sci.substr(0, e);
    digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
    int exp = std::stoi(sci.substr(e + 1));
    std::string out;
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            out = "0." + std::string(static_cast<std::size_t>(-exp - 1), '0') + digits;
        } else if (static_cast<std::size_t>(exp) + 1 >= digits.size()) {
            out =
                digits + std::string(static_cast<std::size_t>(exp) + 1 - digits.size(), '0') + ".0";
        } else {
            out = digits.substr(0, static_cast<std::size_t>(exp) + 1) + "." +
                  digits.substr(static_cast<std::size_t>(exp) + 1);
        }
    } else {
        out = digits.substr(0, 1);
        if (digits.size() > 1)
            out += "." + digits.substr(1);
        char eb[16];
        std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
        out += eb;
    }
    return neg ? "-" + out : out;
}

std::string py_repr_string(const std::string& s) {
    char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
    std::string out(1, q);
    for (char c : s) {
        switch (c) {
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (c == q) {
                out += '\\';
                out += c;
            } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
                char b[8];
                std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned char>(c));
                out += b;
            } else {
                out += c;
            }
        }
    }
    return out + q;
}

std::string repr(const Value& v);

std::string container_str(const Value& v) {
    std::string out;
    if (v.is_array()) {
        out = "[";
        for (std::size_t k = 0; k < v.arr->size(); ++k)
            out += (k ? ", " : "") + repr((*v.arr)[k]);
        return out + "]";
    }
    if (v.is_namespace) {
        out = "<Namespace {";
    } else {
        out = "{";
    }
    bool first = true;
    for (const auto& [k, x] : v.obj->items) {
        out += (first ? "" : ", ") + py_repr_string(k) + ": " + repr(x);
        first = false;
    }
    return out + (v.is_namespace ? "}>" : "}");
}

std::string repr(const Value& v) {
    if (v.is_string())
        return py_repr_string(v.s);
    if (v.is_undefined())
        return "Undefined";
    return v.str();
}

} // namespace

std::string Value::str() const {
    switch (type) {
    case Type::undefined:
        return "";
    case Type::none:
        return "None";
    case Type::boolean:
        return b ? "True" : "False";
    case Type::integer:
        return std::to_string(i);
    case Type::floating:
        return float_repr(f);
    case Type::string:
        return s;
    case Type::array:
    case Type::object:
        return container_str(*this);
    case Type::function:
        return "<function>";
    }
    return "";
}

bool Args::has(std::size_t index, std::string_view name) const {
    if (index < pos.size())
        return true;
    for (const auto& [k, v] : kw)
        if (k == name)
            return true;
    return false;
}
Value Args::get(std::size_t index, std::string_view name, Value fallback) const {
    if (index < pos.size())
        return pos[index];
    for (const auto& [k, v] : kw)
        if (k == name)
            return v;
    return fallback;
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {

Value from_ordered_json(const nlohmann::ordered_json& j, int depth) {
    FORGE_CHECK(depth < 512, "[chat_template] JSON input is nested too deeply");
    switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
        return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
        return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
        return Value::integer(j.get<std::int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
        auto u = j.get<std::uint64_t>();
        if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            return Value::integer(static_cast<std::int64_t>(u));
        return Value::floating(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
        return Value::floating(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
        return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
        Array a;
        a.reserve(j.size());
        for (const auto& x : j)
            a.push_back(from_ordered_json(x, depth + 1));
        return Value::array(std::move(a));
    }
    case nlohmann::ordered_json::value_t::object: {
        Object o;
        for (const auto& [k, x] : j.items())
            o.items.emplace_back(k, from_ordered_json(x, depth + 1)); // keys are unique
        return Value::object(std::move(o));
    }
    default:
        return Value::none();
    }
}

void json_string(std::string& out, const std::string& s) {
    out += '"';
    for (char c : s) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        case '\b':
            out += "\\b";
            break;
        case '\f':
            out += "\\f";
            break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned char>(c));
                out += b;
            } else {
                out += c;
            }
        }
    }
    out += '"';
}

void json_dump(std::string& out, const Value& v, int indent, bool sort_keys, int depth) {
    FORGE_CHECK(depth < 512, "[chat_template] tojson: value is nested too deeply");
    std::string pad =
        indent >= 0 ? "\n" + std::string(static_cast<std::size_t>(indent * (depth + 1)), ' ') : "";
    std::string end_pad =
        indent >= 0 ? "\n" + std::string(static_cast<std::size_t>(indent * depth), ' ') : "";
    const char* item_sep = indent >= 0 ? "," : ", ";
    switch (v.type) {
    case Value::Type::undefined:
    case Value::Type::none:
        out += "null";
        return;
    case Value::Type::boolean:
        out += v.b ? "true" : "false";
        return;
    case Value::Type::integer:
        out += std::to_string(v.i);
        return;
    case Value::Type::floating:
        out += std::isfinite(v.f) ? float_repr(v.f)
                                  : (std::isnan(v.f) ? "NaN"
                                     : v.f < 0       ? "-Infinity"
                                                     : "Infinity");
        return;
    case Value::Type::string:
        json_string(out, v.s);
        return;
    case Value::Type::array:
        if (v.arr->empty()) {
            out += "[]";
            return;
        }
        out += "[";
        for (std::size_t k = 0; k < v.arr->size(); ++k) {
            if (k)
                out += item_sep;
            out += pad;
            json_dump(out, (*v.arr)[k], indent, sort_keys, depth + 1);
        }
        out += end_pad + "]";
        return;
    case Value::Type::object: {
        if (v.obj->items.empty()) {
            out += "{}";
            return;
        }
        std::vector<const std::pair<std::string, Value>*> items;
        for (const auto& kv : v.obj->items)
            items.push_back(&kv);
        if (sort_keys)
            std::stable_sort(items.begin(), items.end(),
                             [](auto* a, auto* b) { return a->first < b->first; });
        out += "{";
        for (std::size_t k = 0; k < items.size(); ++k) {
            if (k)
                out += item_sep;
            out += pad;
            json_string(out, items[k]->first);
            out += ": ";
            json_dump(out, items[k]->second, indent, sort_keys, depth + 1);
        }
        out += end_pad + "}";
        return;
    }
    case Value::Type::function:
        throw InvalidArgument("[chat_template] tojson: a function is not JSON");
    }
}

} // namespace

Value from_json(std::string_view json, std::string_view what) {
    nlohmann::ordered_json j;
    try {
        j = nlohmann::ordered_json::parse(json);
    } catch (const nlohmann::json::exception& e) {
        throw InvalidArgument(
            detail::str_cat("[chat_template] ", what, " is not valid JSON: ", e.what()));
    }
    return from_ordered_json(j, 0);
}

Value strftime_now_function(std::optional<std::time_t> at) {
    return Value::function([at](Args& a) {
        Value fmt = a.get(0, "format");
        const std::time_t t = at ? *at : std::time(nullptr);
        std::tm tm{};
        localtime_r(&t, &tm);
        char buf[256];
        std::size_t len = fmt.is_string() ? std::strftime(buf, sizeof buf, fmt.s.c_str(), &tm) : 0;
        return Value::string(std::string(buf, len));
    });
}

std::string to_json(const Value& v, int indent, bool sort_keys) {
    std::string out;
    json_dump(out, v, indent, sort_keys, 0);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Interpreter

namespace {

constexpr std::uint64_t kMaxSteps = 2'000'000; // node evaluations per render
constexpr std::size_t kMaxOutput = 64u << 20;  // bytes of rendered text
constexpr std::size_t kMaxItems = 1'000'000;   // elements one list may hold
constexpr int kMaxCallDepth = 64;              // nested macro calls

struct Scope {
    std::vector<std::pair<std::string, Value>> vars;
    std::shared_ptr<Scope> parent;
    Value* find(std::string_view name) {
        for (Scope* s = this; s; s = s->parent.get())
            for (auto& [k, v] : s->vars)
                if (k == name)
                    return &v;
        return nullptr;
    }
    void set(const std::string& name, Value v) {
        for (auto& [k, old] : vars)
            if (k == name) {
                old = std::move(v);
                return;
            }
        vars.emplace_back(name, std::move(v));
    }
};
using ScopePtr = std::shared_ptr<Scope>;

struct BreakSignal {};
struct ContinueSignal {};

// Code points of a UTF-8 string (invalid bytes pass through one by one).
std::vector<std::string> chars_of(const std::string& s) {
    std::vector<std::string> out;
    for (std::size_t k = 0; k < s.size();) {
        auto c = static_cast<unsigned char>(s[k]);
        std::size_t len = c < 0x80         ? 1
                          : (c >> 5) == 6  ? 2
                          : (c >> 4) == 14 ? 3
                          : (c >> 3) == 30 ? 4
                                           : 1;
        if (k + len > s.size())
            len = 1;
        out.push_back(s.substr(k, len));
        k += len;
    }
    return out;
}

std::string map_case(const std::string& s, int mode) { // 0 lower, 1 upper
    std::string out;
    out.reserve(s.size());
    auto p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
    utf8proc_ssize_t n = static_cast<utf8proc_ssize_t>(s.size()), k = 0;
    while (k < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len = utf8proc_iterate(p + k, n - k, &cp);
        if (len <= 0) {
            out.push_back(s[static_cast<std::size_t>(k)]);
            ++k;
            continue;
        }
        cp = mode == 0 ? utf8proc_tolower(cp) : utf8proc_toupper(cp);
        utf8proc_uint8_t buf[4];
        auto w = utf8proc_encode_char(cp, buf);
        out.append(reinterpret_cast<char*>(buf), static_cast<std::size_t>(w));
        k += len;
    }
    return out;
}

bool is_py_space(const std::string& ch) {
    if (ch.size() == 1)
        return ch[0] == ' ' || (ch[0] >= '\t' && ch[0] <= '\r') || (ch[0] >= 0x1C && ch[0] <= 0x1F);
    utf8proc_int32_t cp;
    if (utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(ch.data()),
                         static_cast<utf8proc_ssize_t>(ch.size()), &cp) <= 0)
        return false;
    auto cat = utf8proc_category(cp);
    return cp == 0x85 || cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL ||
           cat == UTF8PROC_CATEGORY_ZP;
}

std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
    auto cs = chars_of(s);
    std::vector<std::string> set;
    bool use_set = chars.is_string();
    if (use_set)
        set = chars_of(chars.s);
    auto strip = [&](const std::string& c) {
        return use_set ? std::find(set.begin(), set.end(), c) != set.end() : is_py_space(c);
    };
    std::size_t a = 0, b = cs.size();
    if (left)
        while (a < b && strip(cs[a]))
            ++a;
    if (right)
        while (b > a && strip(cs[b - 1]))
            --b;
    std::string out;
    for (std::size_t k = a; k < b; ++k)
        out += cs[k];
    return out;
}

std::string capitalize(const std::string& s) {
    auto cs = chars_of(s);
    std::string out;
    for (std::size_t k = 0; k < cs.size(); ++k)
        out += map_case(cs[k], k == 0 ? 1 : 0);
    return out;
}

std::string title_case(const std::string& s) {
    std::string out;
    bool prev_cased = false;
    for (const auto& c : chars_of(s)) {
        utf8proc_int32_t cp = 0;
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(c.data()),
                         static_cast<utf8proc_ssize_t>(c.size()), &cp);
        auto cat = utf8proc_category(cp);
        bool cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
                     cat == UTF8PROC_CATEGORY_LT;
        out += map_case(c, prev_cased ? 0 : 1);
        prev_cased = cased;
    }
    return out;
}

const char* type_name(const Value& v) {
    switch (v.type) {
    case Value::Type::undefined:
        return "undefined";
    case Value::Type::none:
        return "none";
    case Value::Type::boolean:
        return "bool";
    case Value::Type::integer:
        return "int";
    case Value::Type::floating:
        return "float";
    case Value::Type::string:
        return "string";
    case Value::Type::array:
        return "list";
    case Value::Type::object:
        return v.is_namespace ? "namespace" : "dict";
    case Value::Type::function:
        return "function";
    }
    return "?";
}

double as_double(const Value& v) {
    return v.type == Value::Type::floating  ? v.f
           : v.type == Value::Type::boolean ? (v.b ? 1 : 0)
                                            : static_cast<double>(v.i);
}
bool numeric(const Value& v) {
    return v.is_number() || v.type == Value::Type::boolean;
}

bool equal(const Value& a, const Value& b) {
    if (numeric(a) && numeric(b)) {
        if (a.type == Value::Type::floating || b.type == Value::Type::floating)
            return as_double(a) == as_double(b);
        auto ai = a.type == Value::Type::boolean ? static_cast<std::int64_t>(a.b) : a.i;
        auto bi = b.type == Value::Type::boolean ? static_cast<std::int64_t>(b.b) : b.i;
        return ai == bi;
    }
    if (a.type != b.type)
        return false;
    switch (a.type) {
    case Value::Type::undefined:
    case Value::Type::none:
        return true;
    case Value::Type::string:
        return a.s == b.s;
    case Value::Type::array:
        if (a.arr->size() != b.arr->size())
            return false;
        for (std::size_t k = 0; k < a.arr->size(); ++k)
            if (!equal((*a.arr)[k], (*b.arr)[k]))
                return false;
        return true;
    case Value::Type::object:
        if (a.obj->items.size() != b.obj->items.size())
            return false;
        for (const auto& [k, v] : a.obj->items) {
            const Value* o = b.obj->find(k);
            if (!o || !equal(v, *o))
                return false;
        }
        return true;
    case Value::Type::function:
        return a.fn == b.fn;
    default:
        return false;
    }
}

class Interp {
  public:
    std::string out;

    void run(const Node& n, const ScopePtr& scope) { exec(n, scope); }

  private:
    std::uint64_t steps_ = 0;
    int call_depth_ = 0;

    [[noreturn]] void fail(const Node& n, const std::string& msg) const {
        throw InvalidArgument(
            detail::str_cat("[chat_template] line ", n.line, ", column ", n.col, ": ", msg));
    }
    static std::string where(const Node& n) {
        return detail::str_cat("line ", n.line, ", column ", n.col);
    }

    void tick(const Node& n) {
        if (++steps_ > kMaxSteps)
            fail(n, "template ran for too many steps (endless loop?)");
    }
    void emit(const Node& n, const std::string& s) {
        out += s;
        if (out.size() > kMaxOutput)
            fail(n, "rendered text is larger than 64 MiB");
    }

    // --- statements ---
    void exec(const Node& n, const ScopePtr& scope) {
        tick(n);
        switch (n.kind) {
        case NodeKind::body:
            for (const auto& k : n.kids)
                exec(*k, scope);
            return;
        case NodeKind::text:
            emit(n, n.str);
            return;
        case NodeKind::output:
            emit(n, eval(*n.kids[0], scope).str());
            return;
        case NodeKind::if_: {
            std::size_t k = 0;
            for (; k + 1 < n.kids.size(); k += 2)
                if (eval(*n.kids[k], scope).truthy()) {
                    exec(*n.kids[k + 1], scope);
                    return;
                }
            if (n.flag)
                exec(*n.kids.back(), scope);
            return;
        }
        case NodeKind::for_:
            exec_for(n, scope);
            return;
        case NodeKind::set:
            exec_set(n, scope);
            return;
        case NodeKind::macro:
            define_macro(n, scope);
            return;
        case NodeKind::call_block: {
            const Node& call = *n.kids[0];
            Value f = eval(*call.kids[0], scope);
            if (f.type != Value::Type::function)
                fail(n, "'call' needs a macro");
            Args args = eval_args(call, scope, 1);
            const Node* body = n.kids[1].get();
            args.caller = Value::function([this, body, scope](Args&) {
                std::string saved = std::move(out);
                out.clear();
                exec(*body, scope);
                Value r = Value::string(std::move(out));
                out = std::move(saved);
                return r;
            });
            emit(n, (*f.fn)(args).str());
            return;
        }
        case NodeKind::break_:
            throw BreakSignal{};
        case NodeKind::continue_:
            throw ContinueSignal{};
        default:
            fail(n, "internal error: expression where a statement belongs");
        }
    }

    std::vector<Value> iterate(const Node& n, const Value& v) {
        switch (v.type) {
        case Value::Type::array:
            return *v.arr;
        case Value::Type::object: {
            std::vector<Value> keys;
            for (const auto& [k, x] : v.obj->items)
                keys.push_back(Value::string(k));
            return keys;
        }
        case Value::Type::string: {
            std::vector<Value> cs;
            for (auto& c : chars_of(v.s))
                cs.push_back(Value::string(std::move(c)));
            return cs;
        }
        case Value::Type::undefined:
        case Value::Type::none:
            return {};
        default:
            fail(n, std::string("cannot loop over a value of type ") + type_name(v));
        }
    }

    void bind_targets(const Node& n, Scope& scope, const std::vector<std::string>& names,
                      const Value& v) {
        if (names.size() == 1) {
            scope.set(names[0], v);
            return;
        }
        std::vector<Value> parts = iterate(n, v);
        if (parts.size() != names.size())
            fail(n, detail::str_cat("cannot unpack ", parts.size(), " values into ", names.size(),
                                    " names"));
        for (std::size_t k = 0; k < names.size(); ++k)
            scope.set(names[k], parts[k]);
    }

    void exec_for(const Node& n, const ScopePtr& scope) {
        auto loop_scope = std::make_shared<Scope>();
        loop_scope->parent = scope;
        std::vector<Value> all = iterate(*n.kids[0], eval(*n.kids[0], scope));
        std::vector<Value> items;
        if (n.kids.size() > 3) { // for x in xs if cond
            for (auto& v : all) {
                tick(n);
                bind_targets(n, *loop_scope, n.names, v);
                if (eval(*n.kids[3], loop_scope).truthy())
                    items.push_back(std::move(v));
            }
        } else {
            items = std::move(all);
        }
        auto len = static_cast<std::int64_t>(items.size());
        // One `loop` object per loop, advanced in place (as Jinja's LoopContext is).
        Value loop = Value::object();
        for (const char* key : {"index", "index0", "revindex", "revindex0", "first", "last",
                                "length", "previtem", "nextitem"})
            loop.obj->items.emplace_back(key, Value{});
        loop_scope->set("loop", loop);
        auto& f = loop.obj->items;
        for (std::int64_t k = 0; k < len; ++k) {
            tick(n);
            f[0].second = Value::integer(k + 1);
            f[1].second = Value::integer(k);
            f[2].second = Value::integer(len - k);
            f[3].second = Value::integer(len - k - 1);
            f[4].second = Value::boolean(k == 0);
            f[5].second = Value::boolean(k == len - 1);
            f[6].second = Value::integer(len);
            f[7].second = k > 0 ? items[static_cast<std::size_t>(k - 1)] : Value{};
            f[8].second = k + 1 < len ? items[static_cast<std::size_t>(k + 1)] : Value{};
            bind_targets(n, *loop_scope, n.names, items[static_cast<std::size_t>(k)]);
            try {
                exec(*n.kids[1], loop_scope);
            } catch (const ContinueSignal&) {
                continue;
            } catch (const BreakSignal&) {
                break;
            }
        }
        if (items.empty())
            exec(*n.kids[2], loop_scope);
    }

    void exec_set(const Node& n, const ScopePtr& scope) {
        Value v;
        if (n.flag) { // block set: capture the rendered body
            std::string saved = std::move(out);
            out.clear();
            exec(*n.kids[0], scope);
            v = Value::string(std::move(out));
            out = std::move(saved);
        } else {
            v = eval(*n.kids[0], scope);
        }
        if (!n.str.empty()) { // set ns.attr = v
            Value* target = scope->find(n.names[0]);
            if (!target || !target->is_object() || !target->is_namespace)
                fail(n, "'" + n.names[0] +
                            "' is not a namespace(): only namespace attributes can be set");
            target->obj->set(n.str, std::move(v));
            return;
        }
        bind_targets(n, *scope, n.names, v);
    }

    void define_macro(const Node& n, const ScopePtr& scope) {
        const Node* node = &n;
        std::weak_ptr<Scope> weak = scope; // the macro lives in this scope: no reference cycle
        scope->set(
            n.str, Value::function([this, node, weak](Args& args) -> Value {
                auto defining = weak.lock();
                if (!defining)
                    fail(*node, "macro '" + node->str + "' called after its scope ended");
                if (++call_depth_ > kMaxCallDepth) {
                    call_depth_ = 0;
                    fail(*node, "macro '" + node->str + "' recursed too deeply");
                }
                auto local = std::make_shared<Scope>();
                local->parent = defining;
                const auto& params = node->names;
                if (args.pos.size() > params.size())
                    fail(*node, detail::str_cat("macro '", node->str, "' takes ", params.size(),
                                                " arguments, got ", args.pos.size()));
                for (const auto& [k, v] : args.kw)
                    if (std::find(params.begin(), params.end(), k) == params.end())
                        fail(*node, "macro '" + node->str + "' has no parameter '" + k + "'");
                if (!args.caller.is_undefined())
                    local->set("caller", args.caller);
                for (std::size_t k = 0; k < params.size(); ++k) {
                    if (args.has(k, params[k]))
                        local->set(params[k], args.get(k, params[k]));
                    else if (node->kids[k + 1])
                        local->set(params[k], eval(*node->kids[k + 1], local));
                    else
                        local->set(params[k], Value{});
                }
                std::string saved = std::move(out);
                out.clear();
                exec(*node->kids[0], local);
                Value result = Value::string(std::move(out));
                out = std::move(saved);
                --call_depth_;
                return result;
            }));
    }

    // --- expressions ---
    Value eval(const Node& n, const ScopePtr& scope) {
        tick(n);
        switch (n.kind) {
        case NodeKind::literal:
            return n.value;
        case NodeKind::name: {
            if (Value* v = scope->find(n.str))
                return *v;
            return global(n);
        }
        case NodeKind::list:
        case NodeKind::tuple: {
            Array a;
            for (const auto& k : n.kids)
                a.push_back(eval(*k, scope));
            return Value::array(std::move(a));
        }
        case NodeKind::dict: {
            Object o;
            for (std::size_t k = 0; k + 1 < n.kids.size(); k += 2) {
                Value key = eval(*n.kids[k], scope);
                if (!key.is_string())
                    fail(*n.kids[k],
                         std::string("dict keys must be strings here, got ") + type_name(key));
                o.set(key.s, eval(*n.kids[k + 1], scope));
            }
            return Value::object(std::move(o));
        }
        case NodeKind::attr:
            return get_attr(n, eval(*n.kids[0], scope), n.str);
        case NodeKind::index:
            return get_item(n, eval(*n.kids[0], scope), eval(*n.kids[1], scope));
        case NodeKind::slice:
            return slice(n, scope);
        case NodeKind::call: {
            Value f = eval(*n.kids[0], scope);
            Args args = eval_args(n, scope, 1);
            if (f.type != Value::Type::function) {
                std::string what = n.kids[0]->kind == NodeKind::name   ? "'" + n.kids[0]->str + "'"
                                   : n.kids[0]->kind == NodeKind::attr ? "'" + n.kids[0]->str + "'"
                                                                       : "this value";
                fail(n, what + " is not callable (it is " + type_name(f) + ")");
            }
            return (*f.fn)(args);
        }
        case NodeKind::filter: {
            Value input = eval(*n.kids[0], scope);
            Args args = eval_args(n, scope, 1);
            return apply_filter(n, n.str, input, args, scope);
        }
        case NodeKind::test: {
            // attributes of undefined values are undefined too, so `a.b.c is defined` is safe
            Value input = eval(*n.kids[0], scope);
            Args args = eval_args(n, scope, 1);
            bool r = apply_test(n, n.str, input, args);
            return Value::boolean(n.flag ? !r : r);
        }
        case NodeKind::unary: {
            Value v = eval(*n.kids[0], scope);
            if (n.str == "not")
                return Value::boolean(!v.truthy());
            if (v.type == Value::Type::integer) {
                if (n.str == "-" && v.i == std::numeric_limits<std::int64_t>::min())
                    fail(n, "integer overflow in unary -");
                return Value::integer(n.str == "-" ? -v.i : v.i);
            }
            if (v.type == Value::Type::floating)
                return Value::floating(n.str == "-" ? -v.f : v.f);
            fail(n, "bad operand type for unary " + n.str + ": " + type_name(v));
        }
        case NodeKind::and_: {
            Value a = eval(*n.kids[0], scope);
            return a.truthy() ? eval(*n.kids[1], scope) : a;
        }
        case NodeKind::or_: {
            Value a = eval(*n.kids[0], scope);
            return a.truthy() ? a : eval(*n.kids[1], scope);
        }
        case NodeKind::cond:
            if (eval(*n.kids[1], scope).truthy())
                return eval(*n.kids[0], scope);
            return n.kids[2] ? eval(*n.kids[2], scope) : Value{};
        case NodeKind::binary:
            return binary(n, eval(*n.kids[0], scope), eval(*n.kids[1], scope));
        default:
            fail(n, "internal error: statement where an expression belongs");
        }
    }

    Args eval_args(const Node& n, const ScopePtr& scope, std::size_t first) {
        Args args;
        args.where = where(n);
        for (std::size_t k = first; k < n.kids.size(); ++k) {
            const std::string& kw = n.names[k - first];
            Value v = eval(*n.kids[k], scope);
            if (kw.empty()) {
                if (!args.kw.empty())
                    fail(*n.kids[k], "positional argument after a keyword argument");
                args.pos.push_back(std::move(v));
            } else {
                args.kw.emplace_back(kw, std::move(v));
            }
        }
        return args;
    }

    static std::int64_t norm_index(std::int64_t idx, std::size_t size) {
        return idx < 0 ? idx + static_cast<std::int64_t>(size) : idx;
    }

    Value get_item(const Node& n, const Value& v, const Value& key) {
        if (v.is_object()) {
            if (key.is_string()) {
                if (const Value* x = v.obj->find(key.s))
                    return *x;
                return Value{};
            }
            if (key.is_number() || key.type == Value::Type::boolean) {
                if (const Value* x = v.obj->find(key.str()))
                    return *x;
                return Value{};
            }
            return Value{};
        }
        if ((v.is_array() || v.is_string()) && key.type == Value::Type::integer) {
            if (v.is_array()) {
                auto k = norm_index(key.i, v.arr->size());
                if (k < 0 || k >= static_cast<std::int64_t>(v.arr->size()))
                    return Value{};
                return (*v.arr)[static_cast<std::size_t>(k)];
            }
            auto cs = chars_of(v.s);
            auto k = norm_index(key.i, cs.size());
            if (k < 0 || k >= static_cast<std::int64_t>(cs.size()))
                return Value{};
            return Value::string(cs[static_cast<std::size_t>(k)]);
        }
        if (key.is_string())
            return get_attr(n, v, key.s);
        if (v.is_undefined() || v.is_none())
            return Value{};
        fail(n, std::string("cannot index a ") + type_name(v) + " with a " + type_name(key));
    }

    Value slice(const Node& n, const ScopePtr& scope) {
        Value v = eval(*n.kids[0], scope);
        auto bound = [&](const NodePtr& e, const char* what) -> std::optional<std::int64_t> {
            if (!e)
                return std::nullopt;
            Value b = eval(*e, scope);
            if (b.is_none() || b.is_undefined())
                return std::nullopt;
            if (b.type != Value::Type::integer)
                fail(*e, std::string("slice ") + what + " must be an integer");
            return b.i;
        };
        auto start = bound(n.kids[1], "start");
        auto stop = bound(n.kids[2], "stop");
        auto step_opt = bound(n.kids[3], "step");
        std::int64_t step =
            std::max(step_opt.value_or(1), -std::numeric_limits<std::int64_t>::max());
        if (step == 0)
            fail(n, "slice step cannot be zero");
        std::vector<Value> items;
        bool is_str = v.is_string();
        if (is_str) {
            for (auto& c : chars_of(v.s))
                items.push_back(Value::string(std::move(c)));
        } else if (v.is_array()) {
            items = *v.arr;
        } else if (v.is_undefined() || v.is_none()) {
            return Value{};
        } else {
            fail(n, std::string("cannot slice a ") + type_name(v));
        }
        auto len = static_cast<std::int64_t>(items.size());
        auto clamp = [&](std::optional<std::int64_t> x, std::int64_t dflt, std::int64_t lo,
                         std::int64_t hi) {
            if (!x)
                return dflt;
            std::int64_t k = *x < 0 ? *x + len : *x;
            return std::clamp(k, lo, hi);
        };
        std::vector<Value> out;
        if (step > 0) {
            std::int64_t a = clamp(start, 0, 0, len), b = clamp(stop, len, 0, len);
            for (std::int64_t k = a; k<b; k = b - k> step ? k + step : b)
                out.push_back(items[static_cast<std::size_t>(k)]);
        } else {
            std::int64_t a = clamp(start, len - 1, -1, len - 1), b = clamp(stop, -1, -1, len - 1);
            for (std::int64_t k = a; k > b; k = k - b > -step ? k + step : b)
                out.push_back(items[static_cast<std::size_t>(k)]);
        }
        if (is_str) {
            std::string s;
            for (auto& c : out)
                s += c.s;
            return Value::string(std::move(s));
        }
        return Value::array(std::move(out));
    }

    Value binary(const Node& n, const Value& a, const Value& b) {
        const std::string& op = n.str;
        if (op == "==")
            return Value::boolean(equal(a, b));
        if (op == "!=")
            return Value::boolean(!equal(a, b));
        if (op == "in" || op == "not in") {
            bool r;
            if (b.is_string() && a.is_string()) {
                r = b.s.find(a.s) != std::string::npos;
            } else if (b.is_array()) {
                r = std::any_of(b.arr->begin(), b.arr->end(),
                                [&](const Value& x) { return equal(a, x); });
            } else if (b.is_object()) {
                r = a.is_string() && b.obj->find(a.s) != nullptr;
            } else if (b.is_undefined() || b.is_none()) {
                r = false;
            } else {
                fail(n, std::string("'in' needs a string, list or dict on its right, got ") +
                            type_name(b));
            }
            return Value::boolean(op == "in" ? r : !r);
        }
        if (op == "~")
            return Value::string(a.str() + b.str());
        if (op == "<" || op == ">" || op == "<=" || op == ">=") {
            int c;
            if (numeric(a) && numeric(b)) {
                double x = as_double(a), y = as_double(b);
                c = x < y ? -1 : x > y ? 1 : 0;
            } else if (a.is_string() && b.is_string()) {
                c = a.s.compare(b.s);
                c = c < 0 ? -1 : c > 0 ? 1 : 0;
            } else {
                fail(n, std::string("cannot compare ") + type_name(a) + " and " + type_name(b) +
                            " with " + op);
            }
            bool r = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
            return Value::boolean(r);
        }
        if (op == "+") {
            if (a.is_string() && b.is_string())
                return Value::string(a.s + b.s);
            if (a.is_array() && b.is_array()) {
                Array r = *a.arr;
                r.insert(r.end(), b.arr->begin(), b.arr->end());
                return Value::array(std::move(r));
            }
        }
        if (op == "*") {
            const Value* seq = a.is_string() || a.is_array()   ? &a
                               : b.is_string() || b.is_array() ? &b
                                                               : nullptr;
            const Value* cnt = seq == &a ? &b : &a;
            if (seq && cnt->type == Value::Type::integer) {
                std::int64_t times = std::max<std::int64_t>(0, cnt->i);
                std::size_t unit = seq->is_string() ? seq->s.size() : seq->arr->size();
                if (unit && static_cast<std::uint64_t>(times) > kMaxItems / unit)
                    fail(n, "repetition result is too large");
                if (seq->is_string()) {
                    std::string r;
                    for (std::int64_t k = 0; k < times; ++k)
                        r += seq->s;
                    return Value::string(std::move(r));
                }
                Array r;
                for (std::int64_t k = 0; k < times; ++k)
                    r.insert(r.end(), seq->arr->begin(), seq->arr->end());
                return Value::array(std::move(r));
            }
        }
        if (numeric(a) && numeric(b)) {
            bool fl = a.type == Value::Type::floating || b.type == Value::Type::floating;
            if (op == "/") {
                if (as_double(b) == 0)
                    fail(n, "division by zero");
                return Value::floating(as_double(a) / as_double(b));
            }
            if (fl) {
                double x = as_double(a), y = as_double(b);
                if (op == "+")
                    return Value::floating(x + y);
                if (op == "-")
                    return Value::floating(x - y);
                if (op == "*")
                    return Value::floating(x * y);
                if (op == "**")
                    return Value::floating(std::pow(x, y));
                if (y == 0)
                    fail(n, "division by zero");
                if (op == "//")
                    return Value::floating(std::floor(x / y));
                if (op == "%")
                    return Value::floating(x - y * std::floor(x / y));
            } else {
                std::int64_t x = a.type == Value::Type::boolean ? a.b : a.i;
                std::int64_t y = b.type == Value::Type::boolean ? b.b : b.i;
                std::int64_t r = 0;
                bool overflow = false;
                if (op == "+")
                    overflow = __builtin_add_overflow(x, y, &r);
                else if (op == "-")
                    overflow = __builtin_sub_overflow(x, y, &r);
                else if (op == "*")
                    overflow = __builtin_mul_overflow(x, y, &r);
                else if (op == "**") {
                    if (y < 0)
                        return Value::floating(
                            std::pow(static_cast<double>(x), static_cast<double>(y)));
                    r = 1;
                    std::int64_t base = x; // square-and-multiply: O(log y) steps
                    for (std::int64_t e = y; e > 0 && !overflow; e >>= 1) {
                        if (e & 1)
                            overflow = __builtin_mul_overflow(r, base, &r);
                        if (e > 1 && !overflow)
                            overflow = __builtin_mul_overflow(base, base, &base);
                    }
                } else {
                    if (y == 0)
                        fail(n, "division by zero");
                    if (x == std::numeric_limits<std::int64_t>::min() && y == -1)
                        overflow = true;
                    else {
                        std::int64_t q = x / y, m = x % y;
                        if (m != 0 && ((m < 0) != (y < 0))) {
                            --q;
                            m += y;
                        }
                        r = op == "//" ? q : m;
                    }
                }
                if (overflow)
                    fail(n, "integer overflow in " + op);
                return Value::integer(r);
            }
        }
        fail(n, std::string("unsupported operand types for ") + op + ": " + type_name(a) + " and " +
                    type_name(b));
    }

    // --- attributes and methods ---
    Value method(const Value& self, std::function<Value(const Value&, Args&)> f) {
        return Value::function([self, f](Args& a) { return f(self, a); });
    }

    Value get_attr(const Node& n, const Value& v, const std::string& name) {
        if (v.is_object()) {
            if (const Value* x = v.obj->find(name))
                return *x;
            if (v.is_namespace)
                return Value{};
            if (name == "items")
                return method(v, [](const Value& s, Args&) {
                    Array r;
                    for (const auto& [k, x] : s.obj->items)
                        r.push_back(Value::array({Value::string(k), x}));
                    return Value::array(std::move(r));
                });
            if (name == "keys")
                return method(v, [](const Value& s, Args&) {
                    Array r;
                    for (const auto& [k, x] : s.obj->items)
                        r.push_back(Value::string(k));
                    return Value::array(std::move(r));
                });
            if (name == "values")
                return method(v, [](const Value& s, Args&) {
                    Array r;
                    for (const auto& [k, x] : s.obj->items)
                        r.push_back(x);
                    return Value::array(std::move(r));
                });
            if (name == "get")
                return method(v, [](const Value& s, Args& a) {
                    Value key = a.get(0, "key");
                    Value fallback = a.get(1, "default", Value::none());
                    if (!key.is_string())
                        return fallback;
                    const Value* x = s.obj->find(key.s);
                    return x ? *x : fallback;
                });
            return Value{};
        }
        if (v.is_string())
            return string_method(n, v, name);
        if (v.is_array()) {
            if (name == "append")
                return method(v, [](const Value& s, Args& a) {
                    s.arr->push_back(a.get(0, "item"));
                    return Value::none();
                });
            if (name == "length" || name == "size")
                return Value::integer(static_cast<std::int64_t>(v.arr->size()));
            return Value{};
        }
        return Value{}; // undefined.x, none.x: undefined (lenient, as @huggingface/jinja)
    }

    Value string_method(const Node& n, const Value& v, const std::string& name) {
        auto str_arg = [&n, name](const Args& a, std::size_t k, const char* pname) {
            Value x = a.get(k, pname);
            if (!x.is_string())
                throw InvalidArgument(detail::str_cat("[chat_template] ", a.where, ": ", name,
                                                      "() needs a string argument"));
            return x.s;
        };
        (void)n;
        if (name == "strip" || name == "lstrip" || name == "rstrip") {
            bool l = name != "rstrip", r = name != "lstrip";
            return method(v, [l, r](const Value& s, Args& a) {
                return Value::string(strip_chars(s.s, a.get(0, "chars"), l, r));
            });
        }
        if (name == "upper" || name == "lower")
            return method(v, [name](const Value& s, Args&) {
                return Value::string(map_case(s.s, name == "upper"));
            });
        if (name == "capitalize")
            return method(v, [](const Value& s, Args&) { return Value::string(capitalize(s.s)); });
        if (name == "title")
            return method(v, [](const Value& s, Args&) { return Value::string(title_case(s.s)); });
        if (name == "startswith" || name == "endswith") {
            bool starts = name == "startswith";
            return method(v, [starts, name](const Value& s, Args& a) {
                Value x = a.get(0, "prefix");
                std::vector<std::string> options;
                if (x.is_string())
                    options.push_back(x.s);
                else if (x.is_array())
                    for (const auto& o : *x.arr)
                        if (o.is_string())
                            options.push_back(o.s);
                if (options.empty())
                    throw InvalidArgument(
                        detail::str_cat("[chat_template] ", a.where, ": ", name,
                                        "() needs a string or a tuple of strings"));
                for (const auto& o : options) {
                    bool hit = starts ? s.s.compare(0, o.size(), o) == 0 && s.s.size() >= o.size()
                                      : s.s.size() >= o.size() &&
                                            s.s.compare(s.s.size() - o.size(), o.size(), o) == 0;
                    if (hit)
                        return Value::boolean(true);
                }
                return Value::boolean(false);
            });
        }
        if (name == "split")
            return method(v, [](const Value& s, Args& a) {
                Value sep = a.get(0, "sep", Value::none());
                Value maxv = a.get(1, "maxsplit", Value::integer(-1));
                std::int64_t maxsplit = maxv.type == Value::Type::integer ? maxv.i : -1;
                Array parts;
                if (!sep.is_string()) { // split on runs of white space
                    auto cs = chars_of(s.s);
                    std::size_t k = 0;
                    while (k < cs.size()) {
                        while (k < cs.size() && is_py_space(cs[k]))
                            ++k;
                        if (k >= cs.size())
                            break;
                        std::string word;
                        if (maxsplit >= 0 && static_cast<std::int64_t>(parts.size()) >= maxsplit) {
                            for (; k < cs.size(); ++k)
                                word += cs[k];
                            // Python strips trailing white space of the remainder only on the right
                            parts.push_back(Value::string(strip_chars(word, Value{}, false, true)));
                            break;
                        }
                        while (k < cs.size() && !is_py_space(cs[k]))
                            word += cs[k++];
                        parts.push_back(Value::string(std::move(word)));
                    }
                    return Value::array(std::move(parts));
                }
                if (sep.s.empty())
                    throw InvalidArgument(
                        detail::str_cat("[chat_template] ", a.where, ": split(): empty separator"));
                std::size_t pos = 0;
                while (true) {
                    if (maxsplit >= 0 && static_cast<std::int64_t>(parts.size()) >= maxsplit)
                        break;
                    std::size_t at = s.s.find(sep.s, pos);
                    if (at == std::string::npos)
                        break;
                    parts.push_back(Value::string(s.s.substr(pos, at - pos)));
                    pos = at + sep.s.size();
                }
                parts.push_back(Value::string(s.s.substr(pos)));
                return Value::array(std::move(parts));
            });
        if (name == "replace")
            return method(v, [str_arg](const Value& s, Args& a) {
                std::string from = str_arg(a, 0, "old"), to = str_arg(a, 1, "new");
                Value cv = a.get(2, "count", Value::integer(-1));
                std::int64_t count = cv.type == Value::Type::integer ? cv.i : -1;
                return Value::string(replace_all(s.s, from, to, count));
            });
        if (name == "join")
            return method(v, [](const Value& s, Args& a) {
                Value items = a.get(0, "iterable");
                std::string r;
                if (items.is_array())
                    for (std::size_t k = 0; k < items.arr->size(); ++k)
                        r += (k ? s.s : "") + (*items.arr)[k].str();
                return Value::string(std::move(r));
            });
        if (name == "find")
            return method(v, [str_arg](const Value& s, Args& a) {
                std::size_t at = s.s.find(str_arg(a, 0, "sub"));
                if (at == std::string::npos)
                    return Value::integer(-1);
                return Value::integer(
                    static_cast<std::int64_t>(chars_of(s.s.substr(0, at)).size()));
            });
        if (name == "count")
            return method(v, [str_arg](const Value& s, Args& a) {
                std::string sub = str_arg(a, 0, "sub");
                std::int64_t c = 0;
                if (sub.empty())
                    return Value::integer(static_cast<std::int64_t>(chars_of(s.s).size()) + 1);
                for (std::size_t at = s.s.find(sub); at != std::string::npos;
                     at = s.s.find(sub, at + sub.size()))
                    ++c;
                return Value::integer(c);
            });
        if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum")
            return method(v, [name](const Value& s, Args&) {
                if (s.s.empty())
                    return Value::boolean(false);
                for (const auto& c : chars_of(s.s)) {
                    utf8proc_int32_t cp = 0;
                    utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(c.data()),
                                     static_cast<utf8proc_ssize_t>(c.size()), &cp);
                    auto cat = utf8proc_category(cp);
                    bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
                    bool digit = cat == UTF8PROC_CATEGORY_ND;
                    bool ok = name == "isdigit"   ? digit
                              : name == "isspace" ? is_py_space(c)
                              : name == "isalpha" ? letter
                                                  : (letter || digit);
                    if (!ok)
                        return Value::boolean(false);
                }
                return Value::boolean(true);
            });
        return Value{};
    }

    static std::string replace_all(const std::string& s, const std::string& from,
                                   const std::string& to, std::int64_t count) {
        if (from.empty()) { // Python inserts `to` between every character
            std::string r;
            auto cs = chars_of(s);
            std::int64_t done = 0;
            for (const auto& c : cs) {
                if (count < 0 || done < count) {
                    r += to;
                    ++done;
                }
                r += c;
            }
            if (count < 0 || done < count)
                r += to;
            return r;
        }
        std::string r;
        std::size_t pos = 0;
        std::int64_t done = 0;
        while (count < 0 || done < count) {
            std::size_t at = s.find(from, pos);
            if (at == std::string::npos)
                break;
            r += s.substr(pos, at - pos) + to;
            pos = at + from.size();
            ++done;
        }
        return r + s.substr(pos);
    }

    // --- globals ---
    Value global(const Node& n) {
        const std::string& name = n.str;
        if (name == "raise_exception")
            return Value::function([](Args& a) -> Value {
                throw InvalidArgument(a.get(0, "message").str(),
                                      "raised by the chat template (" + a.where + ")");
            });
        if (name == "namespace")
            return Value::function([](Args& a) {
                Object o;
                for (const auto& p : a.pos)
                    if (p.is_object())
                        for (const auto& [k, x] : p.obj->items)
                            o.set(k, x);
                for (const auto& [k, x] : a.kw)
                    o.set(k, x);
                Value v = Value::object(std::move(o));
                v.is_namespace = true;
                return v;
            });
        if (name == "dict")
            return Value::function([](Args& a) {
                Object o;
                for (const auto& p : a.pos)
                    if (p.is_object())
                        for (const auto& [k, x] : p.obj->items)
                            o.set(k, x);
                for (const auto& [k, x] : a.kw)
                    o.set(k, x);
                return Value::object(std::move(o));
            });
        if (name == "range")
            return Value::function([](Args& a) {
                std::int64_t start = 0, stop, step = 1;
                auto geti = [&](std::size_t k) {
                    const Value& x = a.pos[k];
                    if (x.type != Value::Type::integer)
                        throw InvalidArgument("[chat_template] " + a.where +
                                              ": range() needs integers");
                    return x.i;
                };
                if (a.pos.empty() || a.pos.size() > 3)
                    throw InvalidArgument("[chat_template] " + a.where +
                                          ": range() takes 1 to 3 arguments");
                if (a.pos.size() == 1) {
                    stop = geti(0);
                } else {
                    start = geti(0);
                    stop = geti(1);
                    if (a.pos.size() == 3)
                        step = geti(2);
                }
                if (step == 0)
                    throw InvalidArgument("[chat_template] " + a.where +
                                          ": range() step cannot be zero");
                Array r;
                for (std::int64_t k = start; step > 0 ? k < stop : k > stop;) {
                    if (r.size() >= kMaxItems)
                        throw InvalidArgument("[chat_template] " + a.where +
                                              ": range() is too large");
                    r.push_back(Value::integer(k));
                    if (__builtin_add_overflow(k, step, &k))
                        break;
                }
                return Value::array(std::move(r));
            });
        if (name == "strftime_now")
            return strftime_now_function(std::nullopt);
        return Value{};
    }

    // --- filters ---
    Value apply_filter(const Node& n, const std::string& name, const Value& v, Args& a,
                       const ScopePtr& scope) {
        auto need_string = [&](const char* f) {
            if (!v.is_string())
                fail(n, std::string("filter '") + f + "' needs a string, got " + type_name(v));
        };
        if (name == "trim") {
            if (v.is_undefined())
                return Value::string("");
            need_string("trim");
            return Value::string(strip_chars(v.s, a.get(0, "chars"), true, true));
        }
        if (name == "length" || name == "count") {
            if (v.is_string())
                return Value::integer(static_cast<std::int64_t>(chars_of(v.s).size()));
            if (v.is_array())
                return Value::integer(static_cast<std::int64_t>(v.arr->size()));
            if (v.is_object())
                return Value::integer(static_cast<std::int64_t>(v.obj->items.size()));
            if (v.is_undefined())
                return Value::integer(0);
            fail(n,
                 std::string("filter 'length' needs a string, list or dict, got ") + type_name(v));
        }
        if (name == "tojson") {
            Value ind = a.get(0, "indent", Value::none());
            int indent = ind.type == Value::Type::integer
                             ? static_cast<int>(std::clamp<std::int64_t>(ind.i, 0, 64))
                             : -1;
            return Value::string(
                to_json(v, indent, a.get(99, "sort_keys", Value::boolean(false)).truthy()));
        }
        if (name == "upper" || name == "lower") {
            need_string(name.c_str());
            return Value::string(map_case(v.s, name == "upper"));
        }
        if (name == "capitalize") {
            need_string("capitalize");
            return Value::string(capitalize(v.s));
        }
        if (name == "title") {
            need_string("title");
            return Value::string(title_case(v.s));
        }
        if (name == "default" || name == "d") {
            bool boolean = a.get(1, "boolean", Value::boolean(false)).truthy();
            if (v.is_undefined() || (boolean && !v.truthy()))
                return a.get(0, "default_value", Value::string(""));
            return v;
        }
        if (name == "join") {
            std::string sep = a.get(0, "d", Value::string("")).str();
            Value attr = a.get(1, "attribute");
            std::string r;
            std::vector<Value> items = iterate(n, v);
            for (std::size_t k = 0; k < items.size(); ++k) {
                const Value& x = attr.is_undefined() ? items[k] : get_item(n, items[k], attr);
                r += (k ? sep : "") + x.str();
            }
            return Value::string(std::move(r));
        }
        if (name == "first" || name == "last") {
            std::vector<Value> items = iterate(n, v);
            if (items.empty())
                return Value{};
            return name == "first" ? items.front() : items.back();
        }
        if (name == "string")
            return Value::string(v.str());
        if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
            if (name == "safe")
                return v;
            std::string r;
            for (char c : v.str()) {
                switch (c) {
                case '&':
                    r += "&amp;";
                    break;
                case '<':
                    r += "&lt;";
                    break;
                case '>':
                    r += "&gt;";
                    break;
                case '"':
                    r += "&#34;";
                    break;
                case '\'':
                    r += "&#39;";
                    break;
                default:
                    r += c;
                }
            }
            return Value::string(std::move(r));
        }
        if (name == "int") {
            if (v.type == Value::Type::integer)
                return v;
            if (v.type == Value::Type::floating)
                return Value::integer(static_cast<std::int64_t>(v.f));
            if (v.type == Value::Type::boolean)
                return Value::integer(v.b);
            if (v.is_string()) {
                std::int64_t x = 0;
                std::string t = strip_chars(v.s, Value{}, true, true);
                auto r = std::from_chars(t.data(), t.data() + t.size(), x);
                if (r.ec == std::errc() && r.ptr == t.data() + t.size())
                    return Value::integer(x);
            }
            return a.get(0, "default", Value::integer(0));
        }
        if (name == "float") {
            if (numeric(v))
                return Value::floating(as_double(v));
            if (v.is_string()) {
                char* end = nullptr;
                double x = std::strtod(v.s.c_str(), &end);
                if (end && *end == '\0' && !v.s.empty())
                    return Value::floating(x);
            }
            return a.get(0, "default", Value::floating(0));
        }
        if (name == "abs") {
            if (v.type == Value::Type::integer)
                return Value::integer(v.i < 0 ? -v.i : v.i);
            if (v.type == Value::Type::floating)
                return Value::floating(std::fabs(v.f));
            fail(n, std::string("filter 'abs' needs a number, got ") + type_name(v));
        }
        if (name == "list")
            return Value::array(iterate(n, v));
        if (name == "items") {
            if (v.is_undefined() || v.is_none())
                return Value::array();
            if (!v.is_object())
                fail(n, std::string("filter 'items' needs a dict, got ") + type_name(v));
            Array r;
            for (const auto& [k, x] : v.obj->items)
                r.push_back(Value::array({Value::string(k), x}));
            return Value::array(std::move(r));
        }
        if (name == "reverse") {
            if (v.is_string()) {
                auto cs = chars_of(v.s);
                std::string r;
                for (auto it = cs.rbegin(); it != cs.rend(); ++it)
                    r += *it;
                return Value::string(std::move(r));
            }
            auto items = iterate(n, v);
            std::reverse(items.begin(), items.end());
            return Value::array(std::move(items));
        }
        if (name == "replace") {
            need_string("replace");
            Value from = a.get(0, "old"), to = a.get(1, "new");
            Value cv = a.get(2, "count", Value::integer(-1));
            return Value::string(replace_all(v.s, from.str(), to.str(),
                                             cv.type == Value::Type::integer ? cv.i : -1));
        }
        if (name == "indent") {
            Value w = a.get(0, "width", Value::integer(4));
            std::string pad =
                w.is_string()
                    ? w.s
                    : std::string(static_cast<std::size_t>(std::clamp<std::int64_t>(w.i, 0, 256)),
                                  ' ');
            bool first = a.get(1, "first", Value::boolean(false)).truthy();
            bool blank = a.get(2, "blank", Value::boolean(false)).truthy();
            std::string s = v.str(), r;
            std::size_t pos = 0;
            bool is_first = true;
            while (true) {
                std::size_t nl = s.find('\n', pos);
                std::string line =
                    s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
                bool indent_it = is_first ? first : (blank || !line.empty());
                if (indent_it)
                    r += pad;
                r += line;
                if (nl == std::string::npos)
                    break;
                r += '\n';
                pos = nl + 1;
                is_first = false;
            }
            return Value::string(std::move(r));
        }
        if (name == "unique") {
            Array r;
            for (auto& x : iterate(n, v))
                if (std::none_of(r.begin(), r.end(), [&](const Value& y) { return equal(x, y); }))
                    r.push_back(x);
            return Value::array(std::move(r));
        }
        if (name == "map") {
            Array r;
            Value attr = a.get(99, "attribute");
            for (auto& x : iterate(n, v)) {
                if (!attr.is_undefined()) {
                    Value got = get_item(n, x, attr);
                    if (got.is_undefined())
                        got = a.get(99, "default");
                    r.push_back(got);
                } else {
                    if (a.pos.empty() || !a.pos[0].is_string())
                        fail(n, "map() needs a filter name or attribute=");
                    Args rest;
                    rest.where = a.where;
                    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
                    rest.kw = a.kw;
                    r.push_back(apply_filter(n, a.pos[0].s, x, rest, scope));
                }
            }
            return Value::array(std::move(r));
        }
        if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
            bool by_attr = name == "selectattr" || name == "rejectattr";
            bool keep_if = name == "select" || name == "selectattr";
            std::size_t k0 = by_attr ? 1 : 0;
            Array r;
            for (auto& x : iterate(n, v)) {
                Value subject = by_attr ? get_item(n, x, a.get(0, "attribute")) : x;
                bool t;
                if (a.pos.size() <= k0) {
                    t = subject.truthy();
                } else {
                    Args rest;
                    rest.where = a.where;
                    rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(k0) + 1,
                                    a.pos.end());
                    t = apply_test(n, a.pos[k0].str(), subject, rest);
                }
                if (t == keep_if)
                    r.push_back(x);
            }
            return Value::array(std::move(r));
        }
        if (name == "batch" || name == "sort" || name == "dictsort" || name == "sum" ||
            name == "min" || name == "max" || name == "round" || name == "wordcount" ||
            name == "center" || name == "truncate" || name == "urlencode" || name == "pprint" ||
            name == "xmlattr" || name == "groupby" || name == "slice" || name == "filesizeformat" ||
            name == "format" || name == "striptags" || name == "wordwrap" || name == "random")
            fail(n, "filter '" + name + "' is not supported by Forge's chat templates");
        fail(n, "unknown filter '" + name + "'");
    }

    // --- tests ---
    bool apply_test(const Node& n, const std::string& name, const Value& v, const Args& a) {
        auto arg = [&]() {
            if (a.pos.empty() && a.kw.empty())
                fail(n, "test '" + name + "' needs an argument");
            return a.pos.empty() ? a.kw[0].second : a.pos[0];
        };
        if (name == "defined")
            return !v.is_undefined();
        if (name == "undefined")
            return v.is_undefined();
        if (name == "none")
            return v.is_none();
        if (name == "string")
            return v.is_string();
        if (name == "number")
            return v.is_number();
        if (name == "integer")
            return v.type == Value::Type::integer;
        if (name == "float")
            return v.type == Value::Type::floating;
        if (name == "boolean")
            return v.type == Value::Type::boolean;
        if (name == "true")
            return v.type == Value::Type::boolean && v.b;
        if (name == "false")
            return v.type == Value::Type::boolean && !v.b;
        if (name == "mapping")
            return v.is_object();
        if (name == "iterable")
            return v.is_array() || v.is_object() || v.is_string();
        if (name == "sequence")
            return v.is_array() || v.is_object() || v.is_string();
        if (name == "callable")
            return v.type == Value::Type::function;
        if (name == "lower")
            return v.is_string() && map_case(v.s, 0) == v.s;
        if (name == "upper")
            return v.is_string() && map_case(v.s, 1) == v.s;
        if (name == "odd" || name == "even") {
            if (v.type != Value::Type::integer)
                fail(n, "test '" + name + "' needs an integer");
            bool odd = (v.i % 2) != 0;
            return name == "odd" ? odd : !odd;
        }
        if (name == "divisibleby") {
            Value d = arg();
            if (v.type != Value::Type::integer || d.type != Value::Type::integer || d.i == 0)
                fail(n, "test 'divisibleby' needs non-zero integers");
            return v.i % d.i == 0;
        }
        if (name == "eq" || name == "equalto" || name == "==")
            return equal(v, arg());
        if (name == "ne" || name == "!=")
            return !equal(v, arg());
        if (name == "sameas") {
            Value o = arg();
            if (v.type != o.type)
                return false;
            if (v.is_array())
                return v.arr == o.arr;
            if (v.is_object())
                return v.obj == o.obj;
            return equal(v, o);
        }
        if (name == "in") {
            Node tmp(NodeKind::binary, n.line, n.col);
            tmp.str = "in";
            return binary(tmp, v, arg()).b;
        }
        for (const char* op : {"lt", "le", "gt", "ge", "<", "<=", ">", ">="}) {
            if (name == op) {
                static const std::pair<const char*, const char*> alias[] = {
                    {"lt", "<"}, {"le", "<="}, {"gt", ">"}, {"ge", ">="}};
                std::string sym = name;
                for (auto [w, s] : alias)
                    if (name == w)
                        sym = s;
                Node tmp(NodeKind::binary, n.line, n.col);
                tmp.str = sym;
                return binary(tmp, v, arg()).b;
            }
        }
        fail(n, "unknown test '" + name + "'");
    }
};

} // namespace

Template::Template(std::string_view source) : source_(source), root_(parse_template(source)) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const std::vector<std::pair<std::string, Value>>& globals) const {
    auto scope = std::make_shared<Scope>();
    for (const auto& [k, v] : globals)
        scope->set(k, v);
    Interp interp;
    try {
        interp.run(*root_, scope);
    } catch (const BreakSignal&) {
        throw InvalidArgument("[chat_template] 'break' outside a loop");
    } catch (const ContinueSignal&) {
        throw InvalidArgument("[chat_template] 'continue' outside a loop");
    }
    return std::move(interp.out);
}

} // namespace forge::jinja
