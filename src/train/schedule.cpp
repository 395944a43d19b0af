// LrSchedule::at (see schedule.h).
#include <forge/train/schedule.h>

#include <cmath>
#include <numbers>

#include <forge/core/error.h>

namespace forge {

double LrSchedule::at(int64_t step) const {
    if (kind == Kind::constant)
        return step < warmup ? lr * double(step + 1) / double(warmup) : lr;
    if (step < warmup)
        return lr * double(step + 1) / double(warmup);
    if (step >= decay_steps)
        return min_lr;
    const double r = double(step - warmup) / double(decay_steps - warmup); // in [0, 1)
    const double coeff =
        kind == Kind::cosine ? 0.5 * (1.0 + std::cos(std::numbers::pi * r)) : 1.0 - r;
    return min_lr + coeff * (lr - min_lr);
}

LrSchedule::Kind LrSchedule::parse_kind(const std::string& name) {
    if (name == "cosine")
        return Kind::cosine;
    if (name == "linear")
        return Kind::linear;
    if (name == "constant")
        return Kind::constant;
    throw InvalidArgument("[schedule] unknown schedule '" + name +
                          "' (expected cosine, linear or constant)");
}

std::string LrSchedule::kind_name(Kind k) {
    switch (k) {
    case Kind::cosine:
        return "cosine";
    case Kind::linear:
        return "linear";
    case Kind::constant:
        return "constant";
    }
    return "?";
}

} // namespace forge
