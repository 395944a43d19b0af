// Learning-rate schedules: linear warmup, then cosine (or linear) decay to min_lr, or constant.
// A pure function of the step, so a resumed run gets the same rates with no saved state.
#pragma once

#include <cstdint>
#include <string>

namespace forge {

struct LrSchedule {
    enum class Kind { cosine, linear, constant };
    Kind kind = Kind::cosine;
    double lr = 1e-3;        ///< peak rate, reached at the end of warmup
    double min_lr = 1e-4;    ///< floor of the decay (cosine/linear)
    int64_t warmup = 0;      ///< steps of linear warmup
    int64_t decay_steps = 0; ///< step at which the decay reaches min_lr (usually total steps)

    /// The rate for update `step` (0-based):
    ///   step < warmup:            lr * (step + 1) / warmup
    ///   warmup <= step < decay:   min_lr + (lr - min_lr) * 0.5 (1 + cos(pi r)),
    ///                             r = (step - warmup) / (decay_steps - warmup)   (cosine)
    ///                             min_lr + (lr - min_lr) (1 - r)                 (linear)
    ///   step >= decay_steps:      min_lr
    /// (nanoGPT's get_lr, except warmup reaches the full rate at its last step.)
    double at(int64_t step) const;

    /// "cosine", "linear", "constant" -> Kind; throws InvalidArgument otherwise.
    static Kind parse_kind(const std::string& name);
    static std::string kind_name(Kind k);
};

} // namespace forge
