// The chat web page served at GET / by mount_openai (openai_routes.cpp). Internal.
#pragma once

#include <string_view>

namespace forge::serve {

/// src/serve/chat_page.html, embedded at build time (CMakeLists.txt): one self-contained page
/// that talks to /v1/models and /v1/chat/completions (streaming) from the browser.
std::string_view chat_page_html();

} // namespace forge::serve
