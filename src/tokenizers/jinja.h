// A Jinja subset for chat templates: the values, syntax tree, parser and interpreter that
// ChatTemplate (chat_template.h) runs. It covers what real tokenizer_config.json templates use
// (loops, conditionals, set/namespace, macros, filters, tests, Python string/dict methods) with
// transformers' settings (trim_blocks, lstrip_blocks); it is not a general Jinja engine (no
// inheritance, includes, autoescape or sandbox beyond step and size limits).
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace forge::jinja {

struct Value;
using Array = std::vector<Value>;
/// Dict with insertion order (as Python and JSON objects keep it).
struct Object {
    std::vector<std::pair<std::string, Value>> items;
    const Value* find(std::string_view key) const;
    Value* find(std::string_view key);
    void set(const std::string& key, Value v);
};
struct Args;
/// A callable value: a global function, a macro or a bound method.
using Function = std::function<Value(Args&)>;

struct Value {
    enum class Type {
        undefined,
        none,
        boolean,
        integer,
        floating,
        string,
        array,
        object,
        function
    };
    Type type = Type::undefined;
    bool b = false;
    std::int64_t i = 0;
    double f = 0;
    std::string s;
    std::shared_ptr<Array> arr;
    std::shared_ptr<Object> obj;
    std::shared_ptr<Function> fn;
    bool is_namespace = false; // namespace(): attributes may be assigned with `set ns.x = ...`

    static Value none() { return with(Type::none); }
    static Value boolean(bool v) {
        Value x = with(Type::boolean);
        x.b = v;
        return x;
    }
    static Value integer(std::int64_t v) {
        Value x = with(Type::integer);
        x.i = v;
        return x;
    }
    static Value floating(double v) {
        Value x = with(Type::floating);
        x.f = v;
        return x;
    }
    static Value string(std::string v) {
        Value x = with(Type::string);
        x.s = std::move(v);
        return x;
    }
    static Value array(Array v = {}) {
        Value x = with(Type::array);
        x.arr = std::make_shared<Array>(std::move(v));
        return x;
    }
    static Value object(Object v = {}) {
        Value x = with(Type::object);
        x.obj = std::make_shared<Object>(std::move(v));
        return x;
    }
    static Value function(Function f) {
        Value x = with(Type::function);
        x.fn = std::make_shared<Function>(std::move(f));
        return x;
    }
    bool is_undefined() const { return type == Type::undefined; }
    bool is_none() const { return type == Type::none; }
    bool is_number() const { return type == Type::integer || type == Type::floating; }
    bool is_string() const { return type == Type::string; }
    bool is_array() const { return type == Type::array; }
    bool is_object() const { return type == Type::object; }
    /// Python truthiness.
    bool truthy() const;
    /// str(value) as Jinja prints it (Python style: True, None, ['a', 1]); undefined -> "".
    std::string str() const;

  private:
    static Value with(Type t) {
        Value x;
        x.type = t;
        return x;
    }
};

/// Arguments of a call: positional values and keyword values, in order.
struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
    std::string where; // "line L, column C" of the call, for errors
    Value caller;      // the body of a {% call %} block, as a function (else undefined)
    /// The argument at position `index` or named `name`, else `fallback`.
    Value get(std::size_t index, std::string_view name, Value fallback = {}) const;
    bool has(std::size_t index, std::string_view name) const;
};

/// JSON text -> Value (objects keep key order); throws forge::InvalidArgument naming `what`.
Value from_json(std::string_view json, std::string_view what);
/// Value -> JSON text like Python's json.dumps(ensure_ascii=False): `indent` < 0 is one line
/// with ", " and ": " separators.
std::string to_json(const Value& v, int indent = -1, bool sort_keys = false);

/// The template function strftime_now(format): `at` (or the clock at the call, if unset) in local
/// time, formatted by std::strftime.
Value strftime_now_function(std::optional<std::time_t> at);

class Template {
  public:
    /// Parses `source`; a syntax error throws forge::InvalidArgument with line and column.
    explicit Template(std::string_view source);
    ~Template();
    Template(Template&&) noexcept;
    Template& operator=(Template&&) noexcept;

    /// Renders with `globals` (name -> value) as the outermost scope.
    std::string render(const std::vector<std::pair<std::string, Value>>& globals) const;

    struct Node;

  private:
    std::string source_;
    std::unique_ptr<Node> root_;
};

} // namespace forge::jinja
