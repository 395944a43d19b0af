// Forge's exceptions and the checks that raise them. The library throws and never aborts:
// FORGE_CHECK is for the caller's mistakes (bad shapes, bad files), FORGE_ASSERT for our bugs.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace forge {

/// Base of every exception Forge throws. `hint()` is an optional line on how to fix it.
class Error : public std::runtime_error {
  public:
    explicit Error(const std::string& msg, std::string hint = {})
        : std::runtime_error(msg), hint_(std::move(hint)) {}
    const std::string& hint() const { return hint_; }

  private:
    std::string hint_;
};

/// The caller passed something invalid (shape, dtype, argument, file contents).
class InvalidArgument : public Error {
    using Error::Error;
};
/// A file or resource was not found.
class NotFound : public Error {
    using Error::Error;
};
/// A device (memory, driver) failed.
class DeviceError : public Error {
    using Error::Error;
};
/// An internal invariant broke: a bug in Forge.
class InternalError : public Error {
    using Error::Error;
};

namespace detail {
template <typename... Args> std::string str_cat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}
} // namespace detail

} // namespace forge

/// FORGE_CHECK(cond, "[op] message parts", ...): throws forge::InvalidArgument.
#define FORGE_CHECK(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond))                                                                               \
            throw ::forge::InvalidArgument(::forge::detail::str_cat(__VA_ARGS__));                 \
    } while (0)

/// FORGE_ASSERT(cond): an internal invariant; throws forge::InternalError naming file:line.
#define FORGE_ASSERT(cond)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            throw ::forge::InternalError(::forge::detail::str_cat(                                 \
                "internal error: ", #cond, " failed at ", __FILE__, ":", __LINE__,                 \
                " (this is a bug in Forge; please report it)"));                                   \
    } while (0)
