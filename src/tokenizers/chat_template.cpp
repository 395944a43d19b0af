// ChatTemplate: the public face of the Jinja subset (jinja.h): JSON messages and options in,
// prompt text out; built-in ChatML and Llama-3 templates; tokenizer_config.json reading.
#include <forge/tokenizers/chat_template.h>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>

#include "jinja.h"

namespace forge {

struct ChatTemplate::Impl {
    std::string source;
    jinja::Template tmpl;
    std::string bos, eos;
    Impl(std::string_view src, std::string b, std::string e)
        : source(src), tmpl(src), bos(std::move(b)), eos(std::move(e)) {}
};

ChatTemplate::ChatTemplate(std::string_view source)
    : impl_(std::make_shared<const Impl>(source, std::string(), std::string())) {}

namespace {

// Written for Forge; renders exactly as the ChatML template models ship with.
constexpr std::string_view kChatML = R"({%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
)";

// Written for Forge; renders exactly as Meta-Llama-3-8B-Instruct's template.
constexpr std::string_view kLlama3 = R"({%- for message in messages -%}
    {%- if loop.first -%}{{- bos_token -}}{%- endif -%}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
    {{- message['content'] | trim -}}
    {{- '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
)";

std::string token_text(const nlohmann::json& v) {
    if (v.is_string())
        return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) // AddedToken form
        return v["content"].get<std::string>();
    return {};
}

} // namespace

ChatTemplate ChatTemplate::chatml() {
    return ChatTemplate(kChatML);
}

ChatTemplate ChatTemplate::llama3() {
    ChatTemplate t(kLlama3);
    t.impl_ = std::make_shared<const Impl>(kLlama3, "<|begin_of_text|>", "<|eot_id|>");
    return t;
}

ChatTemplate ChatTemplate::from_tokenizer_config(std::string_view config_json,
                                                 std::string_view name) {
    nlohmann::json cfg;
    try {
        cfg = nlohmann::json::parse(config_json);
    } catch (const nlohmann::json::exception& e) {
        throw InvalidArgument(
            std::string("[chat_template] tokenizer_config.json is not valid JSON: ") + e.what());
    }
    FORGE_CHECK(cfg.is_object(), "[chat_template] tokenizer_config.json must hold a JSON object");
    FORGE_CHECK(cfg.contains("chat_template"),
                "[chat_template] tokenizer_config.json has no chat_template");
    const auto& ct = cfg["chat_template"];
    std::string source;
    if (ct.is_string()) {
        source = ct.get<std::string>();
    } else if (ct.is_array()) {
        std::string names;
        for (const auto& entry : ct) {
            if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
                !entry["name"].is_string() || !entry["template"].is_string())
                continue;
            names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
            if (entry["name"].get<std::string>() == name)
                source = entry["template"].get<std::string>();
        }
        FORGE_CHECK(!source.empty(),
                    "[chat_template] tokenizer_config.json has no chat template named '", name,
                    "' (it has: ", names, ")");
    } else {
        throw InvalidArgument(
            "[chat_template] chat_template in tokenizer_config.json must be a string or a list");
    }
    ChatTemplate t(source);
    t.impl_ = std::make_shared<const Impl>(
        source, cfg.contains("bos_token") ? token_text(cfg["bos_token"]) : "",
        cfg.contains("eos_token") ? token_text(cfg["eos_token"]) : "");
    return t;
}

std::string ChatTemplate::render(std::string_view messages_json,
                                 const ChatTemplateOptions& opts) const {
    jinja::Value messages = jinja::from_json(messages_json, "messages");
    FORGE_CHECK(messages.is_array(), "[chat_template] messages must be a JSON array of messages");
    std::vector<std::pair<std::string, jinja::Value>> globals;
    globals.emplace_back("messages", std::move(messages));
    globals.emplace_back("add_generation_prompt",
                         jinja::Value::boolean(opts.add_generation_prompt));
    globals.emplace_back("bos_token", jinja::Value::string(opts.bos_token.value_or(impl_->bos)));
    globals.emplace_back("eos_token", jinja::Value::string(opts.eos_token.value_or(impl_->eos)));
    if (!opts.tools_json.empty()) {
        jinja::Value tools = jinja::from_json(opts.tools_json, "tools");
        FORGE_CHECK(tools.is_array() || tools.is_none(),
                    "[chat_template] tools must be a JSON array");
        globals.emplace_back("tools", std::move(tools));
    }
    if (!opts.extra_vars_json.empty()) {
        jinja::Value extra = jinja::from_json(opts.extra_vars_json, "extra variables");
        FORGE_CHECK(extra.is_object(), "[chat_template] extra variables must be a JSON object");
        for (auto& [k, v] : extra.obj->items)
            globals.emplace_back(k, v);
    }
    if (opts.now) // ahead of the built-in strftime_now, which reads the clock
        globals.emplace_back("strftime_now", jinja::strftime_now_function(opts.now));
    return impl_->tmpl.render(globals);
}

const std::string& ChatTemplate::source() const {
    return impl_->source;
}
const std::string& ChatTemplate::default_bos_token() const {
    return impl_->bos;
}
const std::string& ChatTemplate::default_eos_token() const {
    return impl_->eos;
}

ChatTemplate::ChatTemplate(const ChatTemplate&) = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(const ChatTemplate&) = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

} // namespace forge
