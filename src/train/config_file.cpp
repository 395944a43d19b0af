// The forge.toml subset parser (see config_file.h).
#include <forge/train/config_file.h>

#include <cctype>
#include <set>

#include <forge/core/error.h>
#include <forge/train/data.h>

namespace forge {

namespace {

struct Cursor {
    std::string_view text;
    size_t pos = 0;
    int line = 1;
    const std::string& origin;

    [[noreturn]] void fail(const std::string& msg) const {
        throw InvalidArgument(origin + ":" + std::to_string(line) + ": " + msg);
    }
    bool eof() const { return pos >= text.size(); }
    char peek() const { return eof() ? '\0' : text[pos]; }
    // Skips spaces and tabs; with `newlines`, also line breaks and comments.
    void skip(bool newlines) {
        while (!eof()) {
            char c = text[pos];
            if (c == ' ' || c == '\t' || c == '\r') {
                ++pos;
            } else if (c == '#') {
                while (!eof() && text[pos] != '\n')
                    ++pos;
            } else if (c == '\n' && newlines) {
                ++pos;
                ++line;
            } else {
                break;
            }
        }
    }
};

std::string parse_string(Cursor& c) {
    const char quote = c.text[c.pos++];
    std::string out;
    while (true) {
        if (c.eof() || c.peek() == '\n')
            c.fail("unterminated string");
        char ch = c.text[c.pos++];
        if (ch == quote)
            return out;
        if (ch == '\\' && quote == '"') {
            if (c.eof())
                c.fail("unterminated string");
            char e = c.text[c.pos++];
            switch (e) {
            case 'n':
                out += '\n';
                break;
            case 't':
                out += '\t';
                break;
            case 'r':
                out += '\r';
                break;
            case '"':
                out += '"';
                break;
            case '\\':
                out += '\\';
                break;
            default:
                c.fail(std::string("unknown escape \\") + e + " in a string");
            }
            continue;
        }
        out += ch;
    }
}

std::string parse_scalar(Cursor& c) {
    if (c.peek() == '"' || c.peek() == '\'')
        return parse_string(c);
    const size_t start = c.pos;
    while (!c.eof()) {
        char ch = c.peek();
        if (ch == ',' || ch == ']' || ch == '#' || ch == '\n' || ch == ' ' || ch == '\t' ||
            ch == '\r')
            break;
        ++c.pos;
    }
    std::string v(c.text.substr(start, c.pos - start));
    if (v.empty())
        c.fail("missing value");
    // Bare values: numbers (1e-3, 2_000), booleans. Anything else must be quoted.
    if (v == "true" || v == "false")
        return v;
    std::string digits;
    for (char ch : v)
        if (ch != '_')
            digits += ch;
    size_t used = 0;
    try {
        (void)std::stod(digits, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != digits.size())
        c.fail("value '" + v + "' is not a number or boolean; quote strings: \"" + v + "\"");
    return digits;
}

} // namespace

std::vector<ConfigEntry> parse_config(std::string_view text, const std::string& origin) {
    Cursor c{text, 0, 1, origin};
    std::vector<ConfigEntry> out;
    std::set<std::string> seen;
    while (true) {
        c.skip(true);
        if (c.eof())
            break;
        if (c.peek() == '[') { // [section]: grouping only
            while (!c.eof() && c.peek() != ']' && c.peek() != '\n')
                ++c.pos;
            if (c.peek() != ']')
                c.fail("unterminated [section] header");
            ++c.pos;
        } else {
            ConfigEntry e;
            e.line = c.line;
            const size_t start = c.pos;
            while (!c.eof() && (std::isalnum(static_cast<unsigned char>(c.peek())) ||
                                c.peek() == '_' || c.peek() == '-'))
                ++c.pos;
            if (c.pos == start)
                c.fail(std::string("expected `key = value`, found '") + c.peek() + "'");
            e.key = std::string(text.substr(start, c.pos - start));
            for (char& ch : e.key)
                if (ch == '_')
                    ch = '-';
            c.skip(false);
            if (c.peek() != '=')
                c.fail("expected '=' after '" + e.key + "'");
            ++c.pos;
            c.skip(false);
            if (c.peek() == '[') {
                e.is_array = true;
                ++c.pos;
                while (true) {
                    c.skip(true);
                    if (c.eof())
                        c.fail("unterminated array for '" + e.key + "'");
                    if (c.peek() == ']') {
                        ++c.pos;
                        break;
                    }
                    e.values.push_back(parse_scalar(c));
                    c.skip(true);
                    if (c.peek() == ',') {
                        ++c.pos;
                    } else if (c.peek() != ']') {
                        c.fail("expected ',' or ']' in the array for '" + e.key + "'");
                    }
                }
            } else {
                e.values.push_back(parse_scalar(c));
            }
            if (!seen.insert(e.key).second)
                c.fail("'" + e.key + "' is set twice");
            out.push_back(std::move(e));
        }
        c.skip(false);
        if (!c.eof() && c.peek() != '\n')
            c.fail("unexpected text after the value");
    }
    return out;
}

std::vector<ConfigEntry> parse_config_file(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        throw NotFound("[config] no such config file: " + path.string());
    return parse_config(read_file_bytes(path), path.string());
}

} // namespace forge
