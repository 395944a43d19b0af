// Embeds src/serve/chat_page.html (the page at GET /). The page itself is edited as HTML;
// CMake wraps it in a raw string literal (build/generated/chat_page_html.inc).
#include "chat_page.h"

namespace forge::serve {

std::string_view chat_page_html() {
    static constexpr char page[] =
#include "chat_page_html.inc"
        ;
    return {page, sizeof(page) - 1};
}

} // namespace forge::serve
