// Chat template tests: real templates from tokenizer_config.json files must render byte for byte
// what @huggingface/jinja renders (fixtures from tools/chat-templates/make_fixtures.mjs), the
// built-in templates must equal the models' own, and malformed templates must fail cleanly.
#include <forge/tokenizers/chat_template.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <forge/core/error.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path fixture_dir() {
    if (const char* dir = std::getenv("FORGE_CHAT_FIXTURES")) // to run other sets by hand
        return dir;
    return fs::path(FORGE_SOURCE_DIR) / "tests/tokenizers/chat_fixtures";
}

json read_json(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return json::parse(ss.str());
}

std::vector<fs::path> fixture_files() {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(fixture_dir()))
        if (e.path().extension() == ".json")
            files.push_back(e.path());
    std::sort(files.begin(), files.end());
    return files;
}

// The fixture's clock ("now": local "YYYY-MM-DD HH:MM:SS" when make_fixtures.mjs rendered it)
// as a time_t of this machine's time zone, so strftime_now prints the same date as the oracle.
std::optional<std::time_t> fixture_now(const json& fx) {
    if (!fx.contains("now"))
        return std::nullopt;
    std::tm tm{};
    std::istringstream in(fx["now"].get<std::string>());
    in >> std::get_time(&tm, "%Y-%m-%d %H:%M:%S");
    EXPECT_FALSE(in.fail()) << "bad \"now\" in " << fx["name"];
    tm.tm_isdst = -1;
    return std::mktime(&tm);
}

forge::ChatTemplateOptions options_of(const json& fx, const json& c) {
    forge::ChatTemplateOptions o;
    o.now = fixture_now(fx);
    o.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    o.bos_token = fx["bos_token"].get<std::string>();
    o.eos_token = fx["eos_token"].get<std::string>();
    o.tools_json = c["tools"].get<std::string>();
    o.extra_vars_json = c["extra"].get<std::string>();
    return o;
}

std::string render(std::string_view tmpl, std::string_view messages,
                   forge::ChatTemplateOptions o = {}) {
    return forge::ChatTemplate(tmpl).render(messages, o);
}

const char* kChat = R"([{"role": "user", "content": "Hello"},
                        {"role": "assistant", "content": " Hi there "},
                        {"role": "user", "content": "Bye"}])";

} // namespace

// Every case of every fixture: the exact text, or raise_exception's exact message.
TEST(ChatTemplate, RealTemplatesMatchHuggingFaceJinja) {
    auto files = fixture_files();
    ASSERT_GE(files.size(), 10u) << "fixtures missing in " << fixture_dir();
    int n_cases = 0, n_failed = 0;
    for (const auto& f : files) {
        json fx = read_json(f);
        SCOPED_TRACE(fx["name"].get<std::string>());
        std::unique_ptr<forge::ChatTemplate> tmpl;
        try {
            tmpl = std::make_unique<forge::ChatTemplate>(fx["template"].get<std::string>());
        } catch (const forge::Error& e) {
            ADD_FAILURE() << f.filename() << ": does not parse: " << e.what();
            ++n_failed;
            continue;
        }
        for (const auto& c : fx["cases"]) {
            ++n_cases;
            std::string label =
                f.filename().string() + " / " + c["conversation"].get<std::string>() +
                " / add_generation_prompt=" + (c["add_generation_prompt"].get<bool>() ? "1" : "0");
            auto opts = options_of(fx, c);
            try {
                std::string got = tmpl->render(c["messages"].get<std::string>(), opts);
                if (c.contains("error")) {
                    ADD_FAILURE() << label << ": expected raise_exception(" << c["error"]
                                  << "), got text";
                    ++n_failed;
                } else if (got != c["expected"].get<std::string>()) {
                    ADD_FAILURE() << label << ":\n--- expected\n"
                                  << c["expected"].get<std::string>() << "\n--- got\n"
                                  << got;
                    ++n_failed;
                }
            } catch (const forge::InvalidArgument& e) {
                if (!c.contains("error") || e.what() != c["error"].get<std::string>()) {
                    ADD_FAILURE() << label << ": threw " << e.what();
                    ++n_failed;
                }
            }
        }
    }
    std::printf("chat templates: %zu templates, %d cases, %d failed\n", files.size(), n_cases,
                n_failed);
}

// The built-in templates render exactly as the official ones in the fixtures.
TEST(ChatTemplate, BuiltinsEqualTheModelsTemplates) {
    struct Pair {
        const char* fixture;
        forge::ChatTemplate builtin;
    };
    std::vector<Pair> pairs = {
        {"Felladrin_Llama-68M-Chat-v1.json", forge::ChatTemplate::chatml()},
        {"meta-llama_Meta-Llama-3-8B-Instruct.json", forge::ChatTemplate::llama3()}};
    for (auto& [name, builtin] : pairs) {
        fs::path p = fixture_dir() / name;
        if (!fs::exists(p))
            GTEST_SKIP() << p << " missing";
        json fx = read_json(p);
        forge::ChatTemplate official(fx["template"].get<std::string>());
        for (const auto& c : fx["cases"]) {
            auto opts = options_of(fx, c);
            std::string messages = c["messages"].get<std::string>();
            EXPECT_EQ(builtin.render(messages, opts), official.render(messages, opts))
                << name << " / " << c["conversation"];
        }
    }
    // Llama 3's defaults come with the built-in.
    auto llama = forge::ChatTemplate::llama3();
    EXPECT_EQ(llama.default_bos_token(), "<|begin_of_text|>");
    EXPECT_EQ(
        llama.render(R"([{"role":"user","content":" Hi "}])", {.add_generation_prompt = true}),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_EQ(forge::ChatTemplate::chatml().render(R"([{"role":"user","content":"Hi"}])"),
              "<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, FromTokenizerConfig) {
    std::string cfg = R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
        "chat_template": [{"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"},
                          {"name": "tool_use", "template": "tools: {{ tools | length }}"}]})";
    auto t = forge::ChatTemplate::from_tokenizer_config(cfg);
    EXPECT_EQ(t.render(R"([{"role":"user","content":"a"},{"role":"user","content":"b"}])"),
              "<s>ab</s>");
    auto tools = forge::ChatTemplate::from_tokenizer_config(cfg, "tool_use");
    EXPECT_EQ(tools.render("[]", {.tools_json = R"([{"a":1},{"b":2}])"}), "tools: 2");
    EXPECT_THROW(forge::ChatTemplate::from_tokenizer_config(cfg, "rag"), forge::InvalidArgument);
    EXPECT_THROW(forge::ChatTemplate::from_tokenizer_config("{}"), forge::InvalidArgument);
    EXPECT_THROW(forge::ChatTemplate::from_tokenizer_config("not json"), forge::InvalidArgument);
}

// The Jinja subset, one feature at a time (expected strings follow Python's Jinja2).
TEST(ChatTemplate, JinjaSubset) {
    const char* none = "[]";
    struct Case {
        const char* tmpl;
        const char* want;
    };
    std::vector<Case> cases = {
        {"{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last "
         "}}{{ loop.length }},{% endfor %}",
         "01TrueFalse3,12FalseFalse3,23FalseTrue3,"},
        {"{% for m in messages %}{% if m.role == 'user' %}U{% elif m.role == 'assistant' %}A{% "
         "else %}?{% endif %}{% endfor %}",
         "UAU"},
        {"{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor "
         "%}{{ ns.n }}",
         "3"},
        {"{% set x = 1 %}{% for m in messages %}{% set x = 2 %}{% endfor %}{{ x }}",
         "1"}, // loops do not leak
        {"{% if true %}{% set y = 5 %}{% endif %}{{ y }}", "5"},
        {"{{ messages[1:] | length }} {{ messages[-1].content }} {{ messages[0]['role'] }}",
         "2 Bye user"},
        {"{{ messages[1].content.strip() }}|{{ messages[1].content | trim }}|{{ 'abc'.upper() }}{{ "
         "'ABC'.lower() }}",
         "Hi there|Hi there|ABCabc"},
        {"{{ 'hello world'.startswith('hello') }} {{ 'x.py'.endswith(('.js', '.py')) }}",
         "True True"},
        {"{{ 'a' ~ 1 ~ none }} {{ 'a' + 'b' }} {{ [1] + [2] }}", "a1None ab [1, 2]"},
        {"{{ 1 < 2 and not 2 < 1 or false }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }}",
         "True True True"},
        {"{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ 3 is "
         "number }}",
         "False True True True True"},
        {"{{ undefined_var | default('dflt') }} {{ '' | default('e', true) }} {{ [1,2,3] | "
         "join('-') }}",
         "dflt e 1-2-3"},
        {"{{ [3,4] | first }}{{ [3,4] | last }} {{ 'hello' | capitalize }} {{ 'ab' | upper }} {{ "
         "'AB' | lower }}",
         "34 Hello AB ab"},
        {"{{ {'a': 1, 'b': [true, none, 'x\"y']} | tojson }}",
         R"({"a": 1, "b": [true, null, "x\"y"]})"},
        {"{{ {'a': {'b': 2}} | tojson(indent=2) }}", "{\n  \"a\": {\n    \"b\": 2\n  }\n}"},
        {"{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;"},
        {"{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z', 'no') }} {{ {'a': 1}.get('z') }}",
         "1 no None"},
        {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 ** 8 }} {{ 1.5 * 2 }}",
         "3 -4 1 3.5 256 3.0"},
        {"{{ 'x' if false else 'y' }}{{ 'z' if false }}|", "y|"},
        {"  {%- if true -%}  a  {%- endif -%}  ", "a"},
        {"a\n  {% if true %}\nb\n  {% endif %}\nc", "a\nb\nc"}, // trim_blocks + lstrip_blocks
        {"{# comment #}x{{- ' y ' -}} z", "x y z"},
        {"{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(1, 7, 2) %}{{ i }}{% endfor "
         "%}",
         "012135"},
        {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break "
         "%}{% endif %}{{ i }}{% endfor %}",
         "013"},
        {"{% for m in messages if m.role == 'user' %}{{ m.content }}{{ loop.length }}{% endfor %}",
         "Hello2Bye2"},
        {"{% for x in [] %}a{% else %}empty{% endfor %}", "empty"},
        {"{% macro hi(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ hi('Bob') }} {{ "
         "hi('Al', punct='?') }}",
         "Hi Bob! Hi Al?"},
        {"{% set s %}in{{ 1 + 1 }}{% endset %}[{{ s }}]", "[in2]"},
        {"{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'abc'[::-1] }} {{ [1,2,3][::2] }}",
         "['a', 'b', '', 'c'] ['a', 'b'] cba [1, 3]"},
        {"{{ 'Hello World' | title }} {{ 'hello world'.title() }} {{ 'aaa'.replace('a', 'b', 2) }}",
         "Hello World Hello World bba"},
        {"{{ [{'n': 1}, {'n': 2}] | map(attribute='n') | list }} {{ [1, 2, 3, 4] | select('odd') | "
         "list }}",
         "[1, 2] [1, 3]"},
        {"{{ [{'t': 'a'}, {'t': 'b'}] | selectattr('t', 'equalto', 'b') | list | length }}", "1"},
        {"{{ 'é' | upper }} {{ 'ÀÉ' | lower }} {{ 'naïve' | length }}", "É àé 5"},
        {"{{ dict(a=1, b='x') | tojson }} {{ 'x' * 3 }} {{ 1 == 1.0 }} {{ true }} {{ none }}",
         R"({"a": 1, "b": "x"} xxx True True None)"},
        {"{% raw %}{{ not parsed }}{% endraw %}", "{{ not parsed }}"},
        {"{{ \"tab\\there\" }}|{{ 'it\\'s' }}|{{ '\\u00e9' }}", "tab\there|it's|é"},
        {"{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(', "
         "') }}",
         "Hello, Bye"},
        {"{{ (messages | last).content }} {{ messages | length > 2 }}", "Bye True"},
        {"{{ 'x\ny' | indent(2) }}|{{ 'x\ny' | indent(2, true) }}", "x\n  y|  x\n  y"},
        {"{{ [1, 'a', [2]] }} {{ {'k': 'v'} }} {{ 0.1 }} {{ 1e20 }} {{ 3.0 }}",
         "[1, 'a', [2]] {'k': 'v'} 0.1 1e+20 3.0"},
    };
    for (const auto& c : cases) {
        std::string got;
        try {
            got = render(c.tmpl, c.tmpl[0] == '{' &&
                                         std::string(c.tmpl).find("messages") != std::string::npos
                                     ? kChat
                                     : kChat);
        } catch (const forge::Error& e) {
            got = std::string("ERROR: ") + e.what();
        }
        EXPECT_EQ(got, c.want) << "template: " << c.tmpl;
    }
    (void)none;
    // add_generation_prompt, bos/eos, tools and extra variables reach the template
    EXPECT_EQ(render("{{ bos_token }}{{ add_generation_prompt }}{{ eos_token }}{{ tools is defined "
                     "}}{{ date }}",
                     "[]",
                     {.add_generation_prompt = true,
                      .bos_token = "<s>",
                      .eos_token = "</s>",
                      .extra_vars_json = R"({"date": "today"})"}),
              "<s>True</s>Falsetoday");
    EXPECT_EQ(render("{% for t in tools %}{{ t.function.name }}{% endfor %}", "[]",
                     {.tools_json = R"([{"type": "function", "function": {"name": "f"}}])"}),
              "f");
    // `now` fixes strftime_now's clock (local time)
    std::tm day{};
    day.tm_year = 2024 - 1900, day.tm_mon = 6, day.tm_mday = 26, day.tm_hour = 12;
    day.tm_isdst = -1;
    EXPECT_EQ(render("{{ strftime_now('%Y-%m-%d %B') }}", "[]", {.now = std::mktime(&day)}),
              "2024-07-26 July");
}

TEST(ChatTemplate, RaiseExceptionThrowsItsMessage) {
    try {
        render("{% if messages[0].role == 'system' %}{{ raise_exception('System role not "
               "supported') }}{% endif %}",
               R"([{"role": "system", "content": "x"}])");
        FAIL() << "no exception";
    } catch (const forge::InvalidArgument& e) {
        EXPECT_STREQ(e.what(), "System role not supported");
        EXPECT_NE(e.hint().find("line 1"), std::string::npos) << e.hint();
    }
}

TEST(ChatTemplate, BadTemplatesGiveLineAndColumn) {
    struct Case {
        const char* tmpl;
        const char* where; // "line L, column C"
        const char* what;  // part of the message
    };
    std::vector<Case> cases = {
        {"{% for m in messages %}\n{{ m.content }}", "line 2, column 16", "endfor"},
        {"{{ messages[0] ", "line 1, column 1", "never closed"},
        {"hello\n  {% if x %}a{% endfor %}", "line 2, column 17", "unexpected 'endfor'"},
        {"{{ 1 + }}", "line 1, column 8", "expected an expression"},
        {"{% frobnicate %}", "line 1, column 4", "unknown or unsupported tag 'frobnicate'"},
        {"{{ 'abc }}", "line 1, column 4", "string is never closed"},
        {"{# comment", "line 1, column 1", "never closed"},
        {"{{ x | }}", "line 1, column 8", "filter name"},
        {"{% endif %}", "line 1, column 4", "no open block"},
        {"{{ a $ b }}", "line 1, column 6", "unexpected character"},
        {"{% set = 3 %}", "line 1, column 8", "variable name"},
    };
    for (const auto& c : cases) {
        try {
            forge::ChatTemplate t(c.tmpl);
            ADD_FAILURE() << "no error for: " << c.tmpl;
        } catch (const forge::InvalidArgument& e) {
            std::string msg = e.what();
            EXPECT_NE(msg.find(c.where), std::string::npos) << c.tmpl << " -> " << msg;
            EXPECT_NE(msg.find(c.what), std::string::npos) << c.tmpl << " -> " << msg;
        }
    }
    // runtime errors name the place too
    try {
        render("line one\n{{ 'a' - 1 }}", "[]");
        FAIL();
    } catch (const forge::InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
    }
    EXPECT_THROW(render("{{ x | nosuchfilter }}", "[]"), forge::InvalidArgument);
    EXPECT_THROW(render("{{ 1 }}", "{not json"), forge::InvalidArgument);
    EXPECT_THROW(render("{{ 1 }}", R"({"role": "user"})"), forge::InvalidArgument);
}

TEST(ChatTemplate, RunawayTemplatesStop) {
    EXPECT_THROW(render("{% for i in range(100000000) %}{% endfor %}", "[]"),
                 forge::InvalidArgument);
    EXPECT_THROW(
        render("{% for i in range(5000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}",
               "[]"),
        forge::InvalidArgument);
    EXPECT_THROW(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "[]"),
                 forge::InvalidArgument);
    EXPECT_THROW(
        render(
            "{% set s = 'xxxxxxxxxxxxxxxx' * 100000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
            "[]"),
        forge::InvalidArgument);
    std::string deep(5000, '(');
    EXPECT_THROW(forge::ChatTemplate("{{ " + deep + " }}"), forge::InvalidArgument);
    std::string nested;
    for (int i = 0; i < 1000; ++i)
        nested += "{% if true %}";
    EXPECT_THROW(forge::ChatTemplate{nested}, forge::InvalidArgument);
}

// Random bytes and random cuts of real templates never crash or hang the parser (a short,
// deterministic version of the libFuzzer target in tests/fuzz/).
TEST(ChatTemplate, GarbageNeverCrashes) {
    std::vector<std::string> seeds;
    for (const auto& f : fixture_files())
        seeds.push_back(read_json(f)["template"].get<std::string>());
    seeds.push_back("{% for m in messages %}{{ m.content | trim }}{% endfor %}");
    std::mt19937 rng(1234);
    const std::string alphabet =
        "{}%#-+()[]<>=!.,:|'\"~*/ \n\tabcdefgijklmnopqrstuvwxyz0123456789_";
    for (int iter = 0; iter < 3000; ++iter) {
        std::string s = seeds[rng() % seeds.size()];
        int edits = 1 + static_cast<int>(rng() % 6);
        for (int e = 0; e < edits && !s.empty(); ++e) {
            std::size_t at = rng() % s.size();
            switch (rng() % 3) {
            case 0:
                s.erase(at, 1 + rng() % 8);
                break;
            case 1:
                s.insert(at, 1, alphabet[rng() % alphabet.size()]);
                break;
            default:
                s[at] = alphabet[rng() % alphabet.size()];
            }
        }
        try {
            forge::ChatTemplate t(s);
            t.render(kChat, {.add_generation_prompt = true, .bos_token = "<s>"});
        } catch (const forge::Error&) {
            // a clear error is fine; anything else fails the test
        }
    }
}

// Integer edge cases end in a value or a clear error, quickly.
TEST(ChatTemplate, IntegerEdgesAreSafe) {
    EXPECT_EQ(
        render("{{ 2 ** 62 }} {{ 1 ** 9223372036854775807 }} {{ (-1) ** 9223372036854775807 }}",
               "[]"),
        "4611686018427387904 1 -1");
    EXPECT_THROW(render("{{ 2 ** 64 }}", "[]"), forge::InvalidArgument);
    EXPECT_THROW(render("{{ -(-9223372036854775807 - 1) }}", "[]"), forge::InvalidArgument);
    EXPECT_THROW(render("{{ 9223372036854775807 + 1 }}", "[]"), forge::InvalidArgument);
    EXPECT_THROW(render("{{ 99999999999999999999 }}", "[]"), forge::InvalidArgument);
    EXPECT_EQ(
        render("{{ [1, 2, 3][::9223372036854775807] }} {{ 'abc'[::-9223372036854775807] }}", "[]"),
        "[1] c");
    EXPECT_EQ(render("{{ range(0, 9223372036854775807, 4611686018427387904) | list }}", "[]"),
              "[0, 4611686018427387904]");
    EXPECT_THROW(render("{{ 1 // 0 }}", "[]"), forge::InvalidArgument);
    EXPECT_EQ(render("{{ -7 % 3 }} {{ 7 % -3 }}", "[]"), "2 -2");
}
