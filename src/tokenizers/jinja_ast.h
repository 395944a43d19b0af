// The syntax tree shared by the Jinja parser (jinja_parser.cpp) and interpreter
// (jinja_runtime.cpp). One node type for statements and expressions keeps both small.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "jinja.h"

namespace forge::jinja {

enum class NodeKind {
    // statements
    body,       // kids: statements
    text,       // str: text to emit
    output,     // kids[0]: expression
    if_,        // kids: cond0, body0, cond1, body1, ... [, else body] (flag: has else)
    for_,       // names: loop targets; kids: iterable, body, else body, [filter condition]
    set,        // names: targets (one name, or "ns" + attr in str); kids[0]: value expr or body
    macro,      // str: name; names: params; kids: body, then default exprs (nullptr = none)
    call_block, // kids[0]: a call expression; kids[1]: body, rendered by the macro's caller()
    break_,
    continue_,
    // expressions
    literal, // value
    name,    // str
    list,    // kids: items
    tuple,   // kids: items
    dict,    // kids: key0, value0, key1, value1, ...
    attr,    // kids[0].str
    index,   // kids[0][kids[1]]
    slice,   // kids[0][kids[1]:kids[2]:kids[3]] (nullptr = omitted)
    call,    // kids[0](kids[1..]) with names[i-1] = keyword or ""
    filter,  // str: filter name; kids[0] input, kids[1..] args, names: keywords
    test,    // str: test name; kids[0] input, kids[1..] args; flag: negated
    unary,   // str: "not", "-", "+"; kids[0]
    binary,  // str: operator; kids[0], kids[1]
    and_,    // kids[0], kids[1]
    or_,     // kids[0], kids[1]
    cond,    // kids[0] if kids[1] else kids[2] (nullptr: undefined)
};

struct Template::Node {
    NodeKind kind;
    int line = 0, col = 0;
    std::string str;
    std::vector<std::string> names;
    std::vector<std::unique_ptr<Node>> kids;
    Value value;
    bool flag = false;

    Node(NodeKind k, int l, int c) : kind(k), line(l), col(c) {}
};

using Node = Template::Node;
using NodePtr = std::unique_ptr<Node>;

/// Parses a template into a `body` node; throws forge::InvalidArgument with line and column.
NodePtr parse_template(std::string_view source);

} // namespace forge::jinja
