// Where a tensor lives. CPU now; CUDA plugs in as a second backend (src/backends/).
#pragma once

#include <string>

namespace forge {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
    DeviceType type = DeviceType::cpu;
    int index = 0;

    static Device cpu() { return {DeviceType::cpu, 0}; }
    static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
    /// Parses "cpu", "cuda", "cuda:1".
    static Device parse(const std::string& s);
    std::string str() const;
    bool operator==(const Device&) const = default;
};

} // namespace forge
