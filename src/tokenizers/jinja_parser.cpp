// Jinja lexer and parser for chat templates: source text -> syntax tree (jinja_ast.h), with
// transformers' whitespace rules (trim_blocks, lstrip_blocks, one trailing newline dropped) and
// `-` whitespace control. Every error names the line and column; nothing recurses unboundedly.
#include "jinja_ast.h"

#include <algorithm>
#include <cstdlib>

#include <forge/core/error.h>

namespace forge::jinja {
namespace {

constexpr int kMaxDepth = 200; // nesting of blocks and expressions

enum class Tok {
    text,
    var_begin,
    var_end,
    block_begin,
    block_end,
    name,
    string,
    integer,
    floating,
    op,
    end
};

struct Token {
    Tok type;
    std::string s;
    std::int64_t i = 0;
    double f = 0;
    std::size_t pos = 0;
};

struct Source {
    std::string_view text;
    std::vector<std::size_t> line_starts;
    std::vector<std::uint32_t> chars_before; // characters (not UTF-8 continuation bytes) before pos
    explicit Source(std::string_view t) : text(t), chars_before(t.size() + 1, 0) {
        line_starts.push_back(0);
        for (std::size_t k = 0; k < t.size(); ++k) {
            if (t[k] == '\n')
                line_starts.push_back(k + 1);
            chars_before[k + 1] =
                chars_before[k] + ((static_cast<unsigned char>(t[k]) & 0xC0) != 0x80 ? 1 : 0);
        }
    }
    std::pair<int, int> line_col(std::size_t pos) const {
        pos = std::min(pos, text.size());
        auto it = std::upper_bound(line_starts.begin(), line_starts.end(), pos);
        auto line = static_cast<std::size_t>(it - line_starts.begin());
        auto col = chars_before[pos] - chars_before[line_starts[line - 1]] + 1;
        return {static_cast<int>(line), static_cast<int>(col)};
    }
    [[noreturn]] void fail(std::size_t pos, const std::string& msg) const {
        auto [l, c] = line_col(pos);
        throw InvalidArgument(
            detail::str_cat("[chat_template] syntax error at line ", l, ", column ", c, ": ", msg));
    }
};

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

std::string describe(const Token& t) {
    switch (t.type) {
    case Tok::text:
        return "text";
    case Tok::var_begin:
        return "'{{'";
    case Tok::var_end:
        return "'}}'";
    case Tok::block_begin:
        return "'{%'";
    case Tok::block_end:
        return "'%}'";
    case Tok::name:
        return "'" + t.s + "'";
    case Tok::string:
        return "a string";
    case Tok::integer:
    case Tok::floating:
        return "a number";
    case Tok::op:
        return "'" + t.s + "'";
    case Tok::end:
        return "the end of the template";
    }
    return "?";
}

class Lexer {
  public:
    explicit Lexer(const Source& src) : src_(src), s_(src.text) {}

    std::vector<Token> run() {
        std::size_t n = s_.size(), pos = 0;
        bool strip_all = false, trim_newline = false;
        while (pos <= n) {
            std::size_t start = find_tag(pos);
            std::string text(s_.substr(pos, (start == std::string_view::npos ? n : start) - pos));
            std::string original = text;
            if (strip_all) {
                std::size_t k = 0;
                while (k < text.size() && is_space(text[k]))
                    ++k;
                text.erase(0, k);
            } else if (trim_newline && !text.empty() && text[0] == '\n') {
                text.erase(0, 1);
            }
            if (start == std::string_view::npos) {
                emit_text(std::move(text), pos);
                break;
            }
            char kind = s_[start + 1];
            char mod = start + 2 < n ? s_[start + 2] : '\0';
            if (mod == '-') {
                while (!text.empty() && is_space(text.back()))
                    text.pop_back();
            } else if ((kind == '%' || kind == '#') && mod != '+') {
                // lstrip_blocks: spaces and tabs between the line start and a block or comment
                std::size_t nl = original.rfind('\n');
                bool line_start = nl != std::string::npos ? true : pos == 0;
                std::size_t from = nl == std::string::npos ? 0 : nl + 1;
                for (std::size_t k = from; k < original.size() && line_start; ++k)
                    if (original[k] != ' ' && original[k] != '\t')
                        line_start = false;
                if (line_start)
                    while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
                        text.pop_back();
            }
            emit_text(std::move(text), pos);
            std::size_t body = start + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
            bool minus_close = false;
            if (kind == '#') {
                std::size_t close = s_.find("#}", body);
                if (close == std::string_view::npos)
                    src_.fail(start, "comment '{#' is never closed with '#}'");
                minus_close = close > body && s_[close - 1] == '-';
                pos = close + 2;
                strip_all = minus_close;
                trim_newline = !minus_close;
                continue;
            }
            tokens_.push_back({kind == '{' ? Tok::var_begin : Tok::block_begin, "", 0, 0, start});
            std::size_t first_tok = tokens_.size();
            pos = lex_inside(body, kind, start, minus_close);
            strip_all = minus_close;
            trim_newline = !minus_close && kind == '%';
            if (kind == '%' && tokens_.size() == first_tok + 2 &&
                tokens_[first_tok].type == Tok::name && tokens_[first_tok].s == "raw")
                pos = lex_raw(pos, start, strip_all, trim_newline);
        }
        tokens_.push_back({Tok::end, "", 0, 0, n});
        return std::move(tokens_);
    }

  private:
    const Source& src_;
    std::string_view s_;
    std::vector<Token> tokens_;

    std::size_t find_tag(std::size_t from) const {
        for (std::size_t k = s_.find('{', from); k != std::string_view::npos;
             k = s_.find('{', k + 1))
            if (k + 1 < s_.size() && (s_[k + 1] == '{' || s_[k + 1] == '%' || s_[k + 1] == '#'))
                return k;
        return std::string_view::npos;
    }

    void emit_text(std::string text, std::size_t pos) {
        if (!text.empty())
            tokens_.push_back({Tok::text, std::move(text), 0, 0, pos});
    }

    // Tokens up to the closing '}}' or '%}'; returns the position after it.
    std::size_t lex_inside(std::size_t pos, char kind, std::size_t tag_start, bool& minus_close) {
        const char close = kind == '{' ? '}' : '%';
        int braces = 0;
        std::size_t n = s_.size();
        while (true) {
            while (pos < n && is_space(s_[pos]))
                ++pos;
            if (pos >= n)
                src_.fail(tag_start, kind == '{' ? "'{{' is never closed with '}}'"
                                                 : "'{%' is never closed with '%}'");
            char c = s_[pos];
            if (braces == 0) {
                if (c == '-' && pos + 2 < n && s_[pos + 1] == close && s_[pos + 2] == '}') {
                    minus_close = true;
                    tokens_.push_back({kind == '{' ? Tok::var_end : Tok::block_end, "", 0, 0, pos});
                    return pos + 3;
                }
                if (c == close && pos + 1 < n && s_[pos + 1] == '}') {
                    minus_close = false;
                    tokens_.push_back({kind == '{' ? Tok::var_end : Tok::block_end, "", 0, 0, pos});
                    return pos + 2;
                }
            }
            if (is_name_start(c)) {
                std::size_t e = pos;
                while (e < n && (is_name_start(s_[e]) || is_digit(s_[e])))
                    ++e;
                tokens_.push_back({Tok::name, std::string(s_.substr(pos, e - pos)), 0, 0, pos});
                pos = e;
            } else if (is_digit(c)) {
                pos = lex_number(pos);
            } else if (c == '\'' || c == '"') {
                pos = lex_string(pos);
            } else {
                static const char* two[] = {"**", "//", "==", "!=", "<=", ">="};
                std::string op;
                for (const char* t : two)
                    if (s_.substr(pos, 2) == t)
                        op = t;
                if (op.empty()) {
                    if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos)
                        src_.fail(pos, std::string("unexpected character '") + c + "'");
                    op = std::string(1, c);
                    if (c == '{')
                        ++braces;
                    if (c == '}' && --braces < 0)
                        src_.fail(pos, "unbalanced '}'");
                }
                tokens_.push_back({Tok::op, op, 0, 0, pos});
                pos += op.size();
            }
        }
    }

    std::size_t lex_number(std::size_t pos) {
        std::size_t e = pos, n = s_.size();
        while (e < n && (is_digit(s_[e]) || s_[e] == '_'))
            ++e;
        bool is_float = false;
        if (e + 1 < n && s_[e] == '.' && is_digit(s_[e + 1])) {
            is_float = true;
            ++e;
            while (e < n && is_digit(s_[e]))
                ++e;
        }
        if (e < n && (s_[e] == 'e' || s_[e] == 'E')) {
            std::size_t k = e + 1;
            if (k < n && (s_[k] == '+' || s_[k] == '-'))
                ++k;
            if (k < n && is_digit(s_[k])) {
                is_float = true;
                e = k;
                while (e < n && is_digit(s_[e]))
                    ++e;
            }
        }
        std::string digits;
        for (std::size_t k = pos; k < e; ++k)
            if (s_[k] != '_')
                digits.push_back(s_[k]);
        Token t{is_float ? Tok::floating : Tok::integer, digits, 0, 0, pos};
        if (is_float) {
            t.f = std::strtod(digits.c_str(), nullptr);
        } else {
            errno = 0;
            t.i = std::strtoll(digits.c_str(), nullptr, 10);
            if (errno == ERANGE)
                src_.fail(pos, "integer literal is too large");
        }
        tokens_.push_back(std::move(t));
        return e;
    }

    static void append_utf8(std::string& out, std::uint32_t cp) {
        if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
            out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
    }

    // A quoted string with Python's escapes.
    std::size_t lex_string(std::size_t pos) {
        char q = s_[pos];
        std::size_t k = pos + 1, n = s_.size();
        std::string out;
        while (true) {
            if (k >= n)
                src_.fail(pos, "string is never closed");
            char c = s_[k];
            if (c == q)
                break;
            if (c != '\\') {
                out.push_back(c);
                ++k;
                continue;
            }
            if (k + 1 >= n)
                src_.fail(pos, "string is never closed");
            char e = s_[k + 1];
            k += 2;
            switch (e) {
            case 'n':
                out.push_back('\n');
                break;
            case 't':
                out.push_back('\t');
                break;
            case 'r':
                out.push_back('\r');
                break;
            case 'b':
                out.push_back('\b');
                break;
            case 'f':
                out.push_back('\f');
                break;
            case 'v':
                out.push_back('\v');
                break;
            case '0':
                out.push_back('\0');
                break;
            case '\\':
                out.push_back('\\');
                break;
            case '\'':
                out.push_back('\'');
                break;
            case '"':
                out.push_back('"');
                break;
            case '\n':
                break; // line continuation
            case 'x':
            case 'u':
            case 'U': {
                std::size_t len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                if (k + len > n)
                    src_.fail(k - 2, "bad \\" + std::string(1, e) + " escape");
                std::uint32_t cp = 0;
                for (std::size_t j = 0; j < len; ++j) {
                    char h = s_[k + j];
                    int v = is_digit(h)              ? h - '0'
                            : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                            : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                                     : -1;
                    if (v < 0)
                        src_.fail(k - 2, "bad \\" + std::string(1, e) + " escape");
                    cp = cp * 16 + static_cast<std::uint32_t>(v);
                }
                if (cp > 0x10FFFF)
                    src_.fail(k - 2, "escape is beyond U+10FFFF");
                append_utf8(out, cp);
                k += len;
                break;
            }
            default: // unknown escapes stay as written, as in Python
                out.push_back('\\');
                out.push_back(e);
            }
        }
        tokens_.push_back({Tok::string, std::move(out), 0, 0, pos});
        return k + 1;
    }

    // After `{% raw %}`: everything up to `{% endraw %}` is text.
    std::size_t lex_raw(std::size_t pos, std::size_t tag_start, bool& strip_all,
                        bool& trim_newline) {
        tokens_.resize(tokens_.size() - 3); // drop {% raw %}
        std::size_t n = s_.size();
        for (std::size_t k = s_.find("{%", pos); k != std::string_view::npos;
             k = s_.find("{%", k + 2)) {
            std::size_t j = k + 2;
            bool minus_open = j < n && s_[j] == '-';
            if (minus_open)
                ++j;
            while (j < n && is_space(s_[j]))
                ++j;
            if (s_.substr(j, 6) != "endraw")
                continue;
            j += 6;
            while (j < n && is_space(s_[j]))
                ++j;
            bool minus_close = j < n && s_[j] == '-';
            if (minus_close)
                ++j;
            if (s_.substr(j, 2) != "%}")
                continue;
            std::string text(s_.substr(pos, k - pos));
            if (strip_all) {
                std::size_t a = 0;
                while (a < text.size() && is_space(text[a]))
                    ++a;
                text.erase(0, a);
            } else if (trim_newline && !text.empty() && text[0] == '\n') {
                text.erase(0, 1);
            }
            if (minus_open)
                while (!text.empty() && is_space(text.back()))
                    text.pop_back();
            emit_text(std::move(text), pos);
            strip_all = minus_close;
            trim_newline = !minus_close;
            return j + 2;
        }
        src_.fail(tag_start, "'{% raw %}' is never closed with '{% endraw %}'");
    }
};

class Parser {
  public:
    Parser(const Source& src, std::vector<Token> toks) : src_(src), t_(std::move(toks)) {}

    NodePtr parse() {
        auto body = parse_body({});
        if (peek().type != Tok::end) {
            // parse_body stops at an end tag nobody opened
            const Token& name = t_[p_ + 1];
            src_.fail(name.pos, "unexpected '" + name.s + "' with no open block to end");
        }
        return body;
    }

  private:
    const Source& src_;
    std::vector<Token> t_;
    std::size_t p_ = 0;
    int depth_ = 0;

    struct DepthGuard {
        Parser& p;
        explicit DepthGuard(Parser& parser, std::size_t pos) : p(parser) {
            if (++p.depth_ > kMaxDepth)
                p.src_.fail(pos, "template is nested too deeply");
        }
        ~DepthGuard() { --p.depth_; }
    };

    const Token& peek(std::size_t ahead = 0) const {
        return t_[std::min(p_ + ahead, t_.size() - 1)];
    }
    const Token& next() {
        const Token& t = t_[p_];
        if (p_ + 1 < t_.size())
            ++p_;
        return t;
    }
    bool is_op(const char* op, std::size_t ahead = 0) const {
        return peek(ahead).type == Tok::op && peek(ahead).s == op;
    }
    bool is_name(const char* name, std::size_t ahead = 0) const {
        return peek(ahead).type == Tok::name && peek(ahead).s == name;
    }
    NodePtr make(NodeKind k, std::size_t pos) const {
        auto [l, c] = src_.line_col(pos);
        return std::make_unique<Node>(k, l, c);
    }
    [[noreturn]] void fail_here(const std::string& expected) const {
        src_.fail(peek().pos, "expected " + expected + ", got " + describe(peek()));
    }
    void expect_op(const char* op) {
        if (!is_op(op))
            fail_here(std::string("'") + op + "'");
        next();
    }
    std::string expect_name(const char* what) {
        if (peek().type != Tok::name)
            fail_here(what);
        return next().s;
    }
    void expect_block_end() {
        if (peek().type != Tok::block_end)
            fail_here("'%}'");
        next();
    }

    // Statements until a block tag whose name is in `ends` (left unconsumed) or the end.
    NodePtr parse_body(std::initializer_list<const char*> ends) {
        DepthGuard guard(*this, peek().pos);
        auto body = make(NodeKind::body, peek().pos);
        while (true) {
            const Token& t = peek();
            if (t.type == Tok::end)
                return body;
            if (t.type == Tok::text) {
                auto n = make(NodeKind::text, t.pos);
                n->str = t.s;
                body->kids.push_back(std::move(n));
                next();
            } else if (t.type == Tok::var_begin) {
                next();
                auto n = make(NodeKind::output, t.pos);
                n->kids.push_back(parse_expression());
                if (is_op(",")) { // {{ a, b }} prints a tuple
                    auto tup = make(NodeKind::tuple, t.pos);
                    tup->kids.push_back(std::move(n->kids[0]));
                    while (is_op(",")) {
                        next();
                        tup->kids.push_back(parse_expression());
                    }
                    n->kids[0] = std::move(tup);
                }
                if (peek().type != Tok::var_end)
                    fail_here("'}}'");
                next();
                body->kids.push_back(std::move(n));
            } else if (t.type == Tok::block_begin) {
                const Token& name = peek(1);
                if (name.type != Tok::name)
                    src_.fail(name.pos, "expected a tag name after '{%', got " + describe(name));
                for (const char* e : ends)
                    if (name.s == e)
                        return body;
                bool marker = name.s == "generation" || name.s == "endgeneration";
                if (!marker &&
                    (name.s.rfind("end", 0) == 0 || name.s == "elif" || name.s == "else")) {
                    if (ends.size() == 0)
                        src_.fail(name.pos,
                                  "unexpected '" + name.s + "' with no open block to end");
                    std::string want;
                    for (const char* e : ends)
                        want += std::string(want.empty() ? "'" : " or '") + e + "'";
                    src_.fail(name.pos, "unexpected '" + name.s + "', expected " + want);
                }
                if (auto n = parse_statement())
                    body->kids.push_back(std::move(n));
            } else {
                fail_here("text, '{{' or '{%'");
            }
        }
    }

    void expect_end_tag(const char* end, const Token& opener) {
        if (peek().type == Tok::end) {
            auto [l, c] = src_.line_col(opener.pos);
            src_.fail(peek().pos, detail::str_cat("expected '{% ", end,
                                                  " %}' before the end of "
                                                  "the template (the '",
                                                  opener.s, "' at line ", l, ", column ", c,
                                                  " is not closed)"));
        }
        next(); // {%
        next(); // end name
        expect_block_end();
    }

    NodePtr parse_statement() {
        std::size_t begin_pos = next().pos; // {%
        Token name = next();
        DepthGuard guard(*this, name.pos);
        const std::string& kw = name.s;
        if (kw == "if") {
            auto n = make(NodeKind::if_, begin_pos);
            n->kids.push_back(parse_expression());
            expect_block_end();
            n->kids.push_back(parse_body({"elif", "else", "endif"}));
            while (true) {
                if (peek().type == Tok::end)
                    expect_end_tag("endif", name);
                const std::string& tag = peek(1).s;
                if (tag == "elif") {
                    next();
                    next();
                    n->kids.push_back(parse_expression());
                    expect_block_end();
                    n->kids.push_back(parse_body({"elif", "else", "endif"}));
                } else if (tag == "else") {
                    next();
                    next();
                    expect_block_end();
                    n->flag = true;
                    n->kids.push_back(parse_body({"endif"}));
                    expect_end_tag("endif", name);
                    return n;
                } else {
                    expect_end_tag("endif", name);
                    return n;
                }
            }
        }
        if (kw == "for") {
            auto n = make(NodeKind::for_, begin_pos);
            n->names.push_back(expect_name("a loop variable"));
            while (is_op(",")) {
                next();
                n->names.push_back(expect_name("a loop variable"));
            }
            if (!is_name("in"))
                fail_here("'in'");
            next();
            n->kids.push_back(parse_expression(false));
            NodePtr filter;
            if (is_name("if")) {
                next();
                filter = parse_expression(false);
            }
            if (is_name("recursive"))
                src_.fail(peek().pos, "recursive loops are not supported");
            expect_block_end();
            n->kids.push_back(parse_body({"else", "endfor"}));
            if (peek().type != Tok::end && peek(1).s == "else") {
                next();
                next();
                expect_block_end();
                n->kids.push_back(parse_body({"endfor"}));
            } else {
                n->kids.push_back(make(NodeKind::body, peek().pos));
            }
            expect_end_tag("endfor", name);
            if (filter)
                n->kids.push_back(std::move(filter));
            return n;
        }
        if (kw == "set") {
            auto n = make(NodeKind::set, begin_pos);
            n->names.push_back(expect_name("a variable name"));
            if (is_op(".")) {
                next();
                n->str = expect_name("an attribute name");
            } else {
                while (is_op(",")) {
                    next();
                    n->names.push_back(expect_name("a variable name"));
                }
            }
            if (peek().type == Tok::block_end &&
                n->names.size() == 1) { // {% set x %}...{% endset %}
                next();
                n->flag = true;
                n->kids.push_back(parse_body({"endset"}));
                expect_end_tag("endset", name);
                return n;
            }
            expect_op("=");
            auto value = parse_expression();
            if (is_op(",")) {
                auto tup = make(NodeKind::tuple, peek().pos);
                tup->kids.push_back(std::move(value));
                while (is_op(",")) {
                    next();
                    tup->kids.push_back(parse_expression());
                }
                value = std::move(tup);
            }
            n->kids.push_back(std::move(value));
            expect_block_end();
            return n;
        }
        if (kw == "macro") {
            auto n = make(NodeKind::macro, begin_pos);
            n->str = expect_name("a macro name");
            expect_op("(");
            std::vector<NodePtr> defaults;
            while (!is_op(")")) {
                n->names.push_back(expect_name("a parameter name"));
                if (is_op("=")) {
                    next();
                    defaults.push_back(parse_expression());
                } else {
                    defaults.push_back(nullptr);
                }
                if (!is_op(","))
                    break;
                next();
            }
            expect_op(")");
            expect_block_end();
            n->kids.push_back(parse_body({"endmacro"}));
            expect_end_tag("endmacro", name);
            for (auto& d : defaults)
                n->kids.push_back(std::move(d));
            return n;
        }
        if (kw == "call") { // {% call macro(args) %}body{% endcall %}: the macro's caller() is body
            auto n = make(NodeKind::call_block, begin_pos);
            auto callee = parse_postfix(parse_primary());
            if (callee->kind != NodeKind::call)
                src_.fail(name.pos, "'call' needs a macro call, like {% call m(x) %}");
            expect_block_end();
            n->kids.push_back(std::move(callee));
            n->kids.push_back(parse_body({"endcall"}));
            expect_end_tag("endcall", name);
            return n;
        }
        if (kw == "break" || kw == "continue") {
            expect_block_end();
            return make(kw == "break" ? NodeKind::break_ : NodeKind::continue_, begin_pos);
        }
        if (kw == "generation" || kw == "endgeneration") { // transformers' markers: no output
            expect_block_end();
            return nullptr;
        }
        src_.fail(name.pos, "unknown or unsupported tag '" + kw + "'");
    }

    // expression := or_expr ['if' or_expr ['else' expression]]
    NodePtr parse_expression(bool with_cond = true) {
        DepthGuard guard(*this, peek().pos);
        auto e = parse_or();
        while (with_cond && is_name("if")) {
            auto n = make(NodeKind::cond, next().pos);
            auto cond = parse_or();
            NodePtr otherwise;
            if (is_name("else")) {
                next();
                otherwise = parse_expression();
            }
            n->kids.push_back(std::move(e));
            n->kids.push_back(std::move(cond));
            n->kids.push_back(std::move(otherwise));
            e = std::move(n);
        }
        return e;
    }
    NodePtr parse_or() {
        auto e = parse_and();
        while (is_name("or")) {
            auto n = make(NodeKind::or_, next().pos);
            n->kids.push_back(std::move(e));
            n->kids.push_back(parse_and());
            e = std::move(n);
        }
        return e;
    }
    NodePtr parse_and() {
        auto e = parse_not();
        while (is_name("and")) {
            auto n = make(NodeKind::and_, next().pos);
            n->kids.push_back(std::move(e));
            n->kids.push_back(parse_not());
            e = std::move(n);
        }
        return e;
    }
    NodePtr parse_not() {
        if (is_name("not")) {
            DepthGuard guard(*this, peek().pos);
            auto n = make(NodeKind::unary, next().pos);
            n->str = "not";
            n->kids.push_back(parse_not());
            return n;
        }
        return parse_compare();
    }
    NodePtr parse_compare() {
        auto e = parse_math1();
        while (true) {
            std::string op;
            std::size_t pos = peek().pos;
            if (peek().type == Tok::op &&
                (peek().s == "==" || peek().s == "!=" || peek().s == "<" || peek().s == ">" ||
                 peek().s == "<=" || peek().s == ">=")) {
                op = next().s;
            } else if (is_name("in")) {
                next();
                op = "in";
            } else if (is_name("not") && is_name("in", 1)) {
                next();
                next();
                op = "not in";
            } else {
                return e;
            }
            auto n = make(NodeKind::binary, pos);
            n->str = op;
            n->kids.push_back(std::move(e));
            n->kids.push_back(parse_math1());
            e = std::move(n);
        }
    }
    NodePtr binary_loop(NodePtr (Parser::*sub)(), std::initializer_list<const char*> ops) {
        auto e = (this->*sub)();
        while (true) {
            const char* found = nullptr;
            for (const char* op : ops)
                if (is_op(op))
                    found = op;
            if (!found)
                return e;
            auto n = make(NodeKind::binary, next().pos);
            n->str = found;
            n->kids.push_back(std::move(e));
            n->kids.push_back((this->*sub)());
            e = std::move(n);
        }
    }
    NodePtr parse_math1() { return binary_loop(&Parser::parse_concat, {"+", "-"}); }
    NodePtr parse_concat() { return binary_loop(&Parser::parse_math2, {"~"}); }
    NodePtr parse_math2() { return binary_loop(&Parser::parse_pow, {"*", "/", "//", "%"}); }
    NodePtr parse_pow() { return binary_loop(&Parser::parse_unary_filtered, {"**"}); }
    NodePtr parse_unary_filtered() { return parse_unary(true); }

    NodePtr parse_unary(bool with_filter) {
        DepthGuard guard(*this, peek().pos);
        NodePtr e;
        if (is_op("-") || is_op("+")) {
            e = make(NodeKind::unary, peek().pos);
            e->str = next().s;
            e->kids.push_back(parse_unary(false));
        } else {
            e = parse_postfix(parse_primary());
        }
        return with_filter ? parse_filters(std::move(e)) : std::move(e);
    }

    void parse_call_args(Node& n) {
        expect_op("(");
        while (!is_op(")")) {
            if (peek().type == Tok::name && is_op("=", 1)) {
                n.names.push_back(next().s);
                next();
            } else {
                n.names.emplace_back();
            }
            n.kids.push_back(parse_expression());
            if (!is_op(","))
                break;
            next();
        }
        expect_op(")");
    }

    NodePtr parse_filters(NodePtr e) {
        while (true) {
            if (is_op("|")) {
                auto n = make(NodeKind::filter, next().pos);
                n->str = expect_name("a filter name");
                while (is_op(".")) { // dotted filter names are not used, but read them whole
                    next();
                    n->str += "." + expect_name("a filter name");
                }
                n->kids.push_back(std::move(e));
                if (is_op("("))
                    parse_call_args(*n);
                e = std::move(n);
            } else if (is_name("is")) {
                auto n = make(NodeKind::test, next().pos);
                if (is_name("not")) {
                    next();
                    n->flag = true;
                }
                n->str = expect_name("a test name");
                n->kids.push_back(std::move(e));
                if (is_op("(")) {
                    parse_call_args(*n);
                } else if (peek().type == Tok::string || peek().type == Tok::integer ||
                           peek().type == Tok::floating ||
                           (peek().type == Tok::name && !is_name("and") && !is_name("or") &&
                            !is_name("else") && !is_name("if") && !is_name("in") &&
                            !is_name("is") && !is_name("not"))) {
                    n->names.emplace_back();
                    n->kids.push_back(parse_postfix(parse_primary()));
                }
                e = std::move(n);
            } else {
                return e;
            }
        }
    }

    NodePtr parse_postfix(NodePtr e) {
        while (true) {
            if (is_op(".")) {
                auto n = make(NodeKind::attr, next().pos);
                if (peek().type == Tok::integer) { // x.0 means x[0]
                    n->kind = NodeKind::index;
                    auto idx = make(NodeKind::literal, peek().pos);
                    idx->value = Value::integer(next().i);
                    n->kids.push_back(std::move(e));
                    n->kids.push_back(std::move(idx));
                } else {
                    n->str = expect_name("an attribute name");
                    n->kids.push_back(std::move(e));
                }
                e = std::move(n);
            } else if (is_op("[")) {
                std::size_t pos = next().pos;
                NodePtr a, b, c;
                if (!is_op(":"))
                    a = parse_expression();
                if (is_op(":")) {
                    next();
                    if (!is_op("]") && !is_op(":"))
                        b = parse_expression();
                    if (is_op(":")) {
                        next();
                        if (!is_op("]"))
                            c = parse_expression();
                    }
                    auto n = make(NodeKind::slice, pos);
                    n->kids.push_back(std::move(e));
                    n->kids.push_back(std::move(a));
                    n->kids.push_back(std::move(b));
                    n->kids.push_back(std::move(c));
                    e = std::move(n);
                } else {
                    if (!a)
                        fail_here("an index");
                    auto n = make(NodeKind::index, pos);
                    n->kids.push_back(std::move(e));
                    n->kids.push_back(std::move(a));
                    e = std::move(n);
                }
                expect_op("]");
            } else if (is_op("(")) {
                auto n = make(NodeKind::call, peek().pos);
                n->kids.push_back(std::move(e));
                parse_call_args(*n);
                e = std::move(n);
            } else {
                return e;
            }
        }
    }

    NodePtr parse_primary() {
        DepthGuard guard(*this, peek().pos);
        const Token& t = peek();
        switch (t.type) {
        case Tok::name: {
            auto n = make(NodeKind::literal, t.pos);
            const std::string& s = t.s;
            if (s == "true" || s == "True") {
                n->value = Value::boolean(true);
            } else if (s == "false" || s == "False") {
                n->value = Value::boolean(false);
            } else if (s == "none" || s == "None") {
                n->value = Value::none();
            } else {
                n->kind = NodeKind::name;
                n->str = s;
            }
            next();
            return n;
        }
        case Tok::string: {
            auto n = make(NodeKind::literal, t.pos);
            std::string s;
            while (peek().type == Tok::string) // adjacent literals concatenate
                s += next().s;
            n->value = Value::string(std::move(s));
            return n;
        }
        case Tok::integer: {
            auto n = make(NodeKind::literal, t.pos);
            n->value = Value::integer(next().i);
            return n;
        }
        case Tok::floating: {
            auto n = make(NodeKind::literal, t.pos);
            n->value = Value::floating(next().f);
            return n;
        }
        case Tok::op:
            if (t.s == "(") {
                std::size_t pos = next().pos;
                if (is_op(")")) {
                    next();
                    return make(NodeKind::tuple, pos);
                }
                auto e = parse_expression();
                if (is_op(",")) {
                    auto tup = make(NodeKind::tuple, pos);
                    tup->kids.push_back(std::move(e));
                    while (is_op(",")) {
                        next();
                        if (is_op(")"))
                            break;
                        tup->kids.push_back(parse_expression());
                    }
                    e = std::move(tup);
                }
                expect_op(")");
                return e;
            }
            if (t.s == "[") {
                auto n = make(NodeKind::list, next().pos);
                while (!is_op("]")) {
                    n->kids.push_back(parse_expression());
                    if (!is_op(","))
                        break;
                    next();
                }
                expect_op("]");
                return n;
            }
            if (t.s == "{") {
                auto n = make(NodeKind::dict, next().pos);
                while (!is_op("}")) {
                    n->kids.push_back(parse_expression());
                    expect_op(":");
                    n->kids.push_back(parse_expression());
                    if (!is_op(","))
                        break;
                    next();
                }
                expect_op("}");
                return n;
            }
            break;
        default:
            break;
        }
        fail_here("an expression");
    }
};

} // namespace

NodePtr parse_template(std::string_view source) {
    // transformers renders with keep_trailing_newline=False: one final '\n' is dropped.
    if (!source.empty() && source.back() == '\n')
        source.remove_suffix(1);
    Source src(source);
    Lexer lexer(src);
    Parser parser(src, lexer.run());
    return parser.parse();
}

} // namespace forge::jinja
