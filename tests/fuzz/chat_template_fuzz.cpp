// libFuzzer target for chat templates: the input is a template. Parsing and rendering it (with
// and without tools) must end in text or a forge::Error, never a crash, a sanitizer report or a
// hang (libFuzzer's -timeout catches those).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <forge/core/error.h>
#include <forge/tokenizers/chat_template.h>

namespace {
constexpr std::string_view kMessages = R"([
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": " Hello\n"},
  {"role": "assistant", "content": "Hi", "tool_calls": [{"type": "function",
    "function": {"name": "f", "arguments": {"x": 1}}}]},
  {"role": "tool", "content": "{\"ok\": true}"},
  {"role": "user", "content": "Bye"}])";
constexpr std::string_view kTools =
    R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])";
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view source(reinterpret_cast<const char*>(data), size);
    try {
        forge::ChatTemplate t(source);
        try {
            t.render(kMessages,
                     {.add_generation_prompt = true, .bos_token = "<s>", .eos_token = "</s>"});
        } catch (const forge::Error&) {
        }
        try {
            t.render(kMessages,
                     {.tools_json = std::string(kTools), .extra_vars_json = R"({"x": [1, 2]})"});
        } catch (const forge::Error&) {
        }
    } catch (const forge::Error&) {
    }
    return 0;
}
