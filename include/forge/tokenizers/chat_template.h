// Chat templates: turn a list of chat messages into the prompt text a model was trained on, by
// rendering the Jinja template from the model's tokenizer_config.json (the subset of Jinja real
// templates use), or a built-in ChatML / Llama-3 template. Tokenizing the result is Tokenizer's
// job.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace forge {

struct ChatTemplateOptions {
    /// End the prompt with the opening of an assistant turn.
    bool add_generation_prompt = false;
    /// `bos_token` / `eos_token` in the template; unset: the template's defaults (empty, or the
    /// ones read by ChatTemplate::from_tokenizer_config).
    std::optional<std::string> bos_token{};
    std::optional<std::string> eos_token{};
    /// JSON array of tool definitions, seen by the template as `tools`; empty: `tools` is
    /// undefined.
    std::string tools_json{};
    /// JSON object whose members become template variables too (e.g. {"date_string": "1 Jan 2025"}
    /// or {"enable_thinking": false}); they override the ones above.
    std::string extra_vars_json{};
    /// The time `strftime_now` formats (in local time); unset: the clock at render time. Set it
    /// for a prompt that does not change with the date (as llama.cpp's chat templates take `now`).
    std::optional<std::time_t> now{};
};

/// Usage:
///   forge::ChatTemplate t(config_template_text);   // or ChatTemplate::chatml()
///   std::string prompt = t.render(R"([{"role": "user", "content": "Hi"}])",
///                                 {.add_generation_prompt = true, .bos_token = "<s>"});
/// Templates are parsed once (syntax errors throw forge::InvalidArgument naming the line and
/// column) and render from several threads at once. Rendering follows transformers: trim_blocks
/// and lstrip_blocks on, one trailing newline dropped, `raise_exception(msg)` throws
/// forge::InvalidArgument whose what() is msg. A template that loops forever or grows without
/// bound is stopped with InvalidArgument. Semantics are Python Jinja2's (printing True, None,
/// ['a']; str + dict is an error); @huggingface/jinja, the test oracle, differs in those corners.
class ChatTemplate {
  public:
    /// Parses Jinja template text.
    explicit ChatTemplate(std::string_view source);

    /// ChatML: <|im_start|>role\ncontent<|im_end|>\n per message.
    static ChatTemplate chatml();
    /// Llama 3 Instruct: bos_token, then <|start_header_id|>role<|end_header_id|>\n\n
    /// content (trimmed) <|eot_id|> per message; bos/eos default to <|begin_of_text|>, <|eot_id|>.
    static ChatTemplate llama3();
    /// The `chat_template` of a tokenizer_config.json text (a string, or a list of
    /// {"name", "template"} where `name` picks one); its bos_token and eos_token become defaults.
    static ChatTemplate from_tokenizer_config(std::string_view config_json,
                                              std::string_view name = "default");

    /// Renders `messages_json`, a JSON array of messages ({"role": ..., "content": ...}, and any
    /// other fields such as "tool_calls"); the template sees it as `messages`.
    std::string render(std::string_view messages_json, const ChatTemplateOptions& opts = {}) const;

    const std::string& source() const;
    const std::string& default_bos_token() const;
    const std::string& default_eos_token() const;

    ChatTemplate(const ChatTemplate&);
    ChatTemplate(ChatTemplate&&) noexcept;
    ChatTemplate& operator=(const ChatTemplate&);
    ChatTemplate& operator=(ChatTemplate&&) noexcept;
    ~ChatTemplate();

  private:
    struct Impl;
    std::shared_ptr<const Impl> impl_;
};

} // namespace forge
