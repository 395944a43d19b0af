// Data files, content hashing, the memory-mapped token cache and batch sampling (see data.h).
#include <forge/train/data.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

namespace fs = std::filesystem;

namespace forge {

namespace {

constexpr char kMagic[8] = {'F', 'G', 'T', 'O', 'K', 'v', '1', '\0'};
constexpr size_t kHeaderBytes = 64;

struct Header {
    char magic[8];
    uint32_t width;
    uint32_t reserved;
    uint64_t n_tokens;
    uint64_t key;
    uint8_t pad[kHeaderBytes - 32];
};
static_assert(sizeof(Header) == kHeaderBytes);

inline uint64_t mix64(uint64_t x) { // the SplitMix64 / Murmur3 finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// Chunks of about `target` bytes, cut only at a '\n' between two ASCII non-space characters:
// there no match (or lookahead) of the GPT-2, cl100k or o200k pre-tokenizer patterns spans the
// cut, and a tokenizer without pre-tokenizer (char-level) does not care, so the tokens of the
// pieces joined equal the tokens of the whole.
std::vector<std::string_view> safe_chunks(std::string_view text, size_t target) {
    std::vector<std::string_view> out;
    auto is_word = [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u < 0x80 && u > ' ';
    };
    size_t start = 0;
    while (text.size() - start > target) {
        size_t cut = std::string_view::npos;
        for (size_t i = start + target; i + 1 < text.size(); ++i)
            if (text[i] == '\n' && is_word(text[i - 1]) && is_word(text[i + 1])) {
                cut = i + 1;
                break;
            }
        if (cut == std::string_view::npos)
            break;
        out.push_back(text.substr(start, cut - start));
        start = cut;
    }
    out.push_back(text.substr(start));
    return out;
}

int64_t mtime_ns(const fs::path& p) {
    struct stat st {};
    FORGE_CHECK(::stat(p.c_str(), &st) == 0, "[data] cannot stat ", p.string());
    return int64_t(st.st_mtim.tv_sec) * 1000000000LL + int64_t(st.st_mtim.tv_nsec);
}

} // namespace

uint64_t hash64(std::string_view bytes, uint64_t seed) {
    // Four independent lanes over 8-byte words (fast on long inputs), folded with the tail and
    // the length.
    uint64_t h[4] = {seed ^ 0x9e3779b97f4a7c15ULL, seed + 0x632be59bd9b4e019ULL,
                     seed ^ 0x8cb92ba72f3d8dd7ULL, seed - 0x3c6ef372fe94f82bULL};
    const char* p = bytes.data();
    size_t n = bytes.size(), i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; ++l) {
            uint64_t w;
            std::memcpy(&w, p + i + 8 * l, 8);
            h[l] = (h[l] ^ w) * 0x9fb21c651e98df25ULL;
            h[l] ^= h[l] >> 29;
        }
    uint64_t acc = mix64(h[0]) ^ mix64(h[1] + 1) ^ mix64(h[2] + 2) ^ mix64(h[3] + 3);
    for (; i < n; ++i)
        acc = (acc ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ULL;
    return mix64(acc ^ mix64(uint64_t(n)));
}

std::string read_file_bytes(const fs::path& path) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw NotFound("[data] no such file: " + path.string());
    std::ifstream in(path, std::ios::binary);
    FORGE_CHECK(in, "[data] cannot open ", path.string());
    std::string s;
    in.seekg(0, std::ios::end);
    s.resize(size_t(in.tellg()));
    in.seekg(0);
    in.read(s.data(), std::streamsize(s.size()));
    FORGE_CHECK(in || s.empty(), "[data] failed reading ", path.string());
    return s;
}

std::vector<fs::path> list_data_files(const std::vector<fs::path>& inputs) {
    std::vector<fs::path> out;
    FORGE_CHECK(!inputs.empty(), "[data] no data given (pass --data FILE_OR_FOLDER)");
    for (const auto& in : inputs) {
        std::error_code ec;
        auto st = fs::status(in, ec);
        if (ec || !fs::exists(st))
            throw NotFound("[data] no such file or folder: " + in.string(),
                           "pass text files or folders of text files with --data");
        if (fs::is_directory(st)) {
            std::vector<fs::path> found;
            for (auto it = fs::recursive_directory_iterator(
                     in, fs::directory_options::skip_permission_denied);
                 it != fs::recursive_directory_iterator(); ++it) {
                const auto name = it->path().filename().string();
                if (!name.empty() && name[0] == '.') {
                    if (it->is_directory())
                        it.disable_recursion_pending();
                    continue;
                }
                if (it->is_regular_file())
                    found.push_back(it->path());
            }
            std::sort(found.begin(), found.end());
            FORGE_CHECK(!found.empty(), "[data] folder ", in.string(), " holds no files");
            out.insert(out.end(), found.begin(), found.end());
        } else {
            out.push_back(in);
        }
    }
    return out;
}

// ------------------------------------------------------------------------------- TokenFile

struct TokenFile::Mapping {
    fs::path path;
    const uint8_t* base = nullptr;
    size_t bytes = 0;
    Header header{};
    ~Mapping() {
        if (base)
            ::munmap(const_cast<uint8_t*>(base), bytes);
    }
};

TokenFile TokenFile::open(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0)
        throw NotFound("[data] cannot open token file " + path.string());
    struct stat st {};
    ::fstat(fd, &st);
    auto map = std::make_shared<Mapping>();
    map->path = path;
    map->bytes = size_t(st.st_size);
    if (map->bytes < kHeaderBytes) {
        ::close(fd);
        throw InvalidArgument("[data] token file " + path.string() + " is truncated");
    }
    void* p = ::mmap(nullptr, map->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    FORGE_CHECK(p != MAP_FAILED, "[data] cannot map ", path.string());
    map->base = static_cast<const uint8_t*>(p);
    std::memcpy(&map->header, map->base, kHeaderBytes);
    const Header& h = map->header;
    FORGE_CHECK(std::memcmp(h.magic, kMagic, 8) == 0, "[data] ", path.string(),
                " is not a Forge token file");
    FORGE_CHECK(h.width == 2 || h.width == 4, "[data] ", path.string(), " has token width ",
                h.width);
    FORGE_CHECK(map->bytes == kHeaderBytes + h.n_tokens * h.width, "[data] token file ",
                path.string(), " holds ", map->bytes, " bytes, its header says ",
                kHeaderBytes + h.n_tokens * h.width);
    TokenFile f;
    f.map_ = std::move(map);
    return f;
}

int64_t TokenFile::size() const {
    return map_ ? int64_t(map_->header.n_tokens) : 0;
}
int TokenFile::width() const {
    return map_ ? int(map_->header.width) : 0;
}
uint64_t TokenFile::key() const {
    return map_ ? map_->header.key : 0;
}
const fs::path& TokenFile::path() const {
    FORGE_ASSERT(map_);
    return map_->path;
}

uint32_t TokenFile::operator[](int64_t i) const {
    const uint8_t* d = map_->base + kHeaderBytes;
    if (map_->header.width == 2) {
        uint16_t v;
        std::memcpy(&v, d + 2 * i, 2);
        return v;
    }
    uint32_t v;
    std::memcpy(&v, d + 4 * i, 4);
    return v;
}

void TokenFile::read(int64_t start, int64_t n, int64_t* out) const {
    FORGE_CHECK(map_ && start >= 0 && n >= 0 && start + n <= size(), "[data] token range [", start,
                ", ", start + n, ") outside a file of ", size(), " tokens");
    const uint8_t* d = map_->base + kHeaderBytes;
    if (map_->header.width == 2) {
        const auto* s = reinterpret_cast<const uint16_t*>(d) + start; // 64-byte header: aligned
        for (int64_t i = 0; i < n; ++i)
            out[i] = s[i];
    } else {
        const auto* s = reinterpret_cast<const uint32_t*>(d) + start;
        for (int64_t i = 0; i < n; ++i)
            out[i] = s[i];
    }
}

// --------------------------------------------------------------------------- token cache

TokenCache tokenize_cached(const std::vector<fs::path>& files, const Tokenizer& tok,
                           uint64_t tokenizer_hash, const fs::path& cache_dir, int n_threads) {
    FORGE_CHECK(!files.empty(), "[data] no data files");
    // The cache file's name: which files with which tokenizer. Its key: their current state.
    uint64_t name_hash = hash64("forge-token-cache", tokenizer_hash);
    std::vector<std::string> texts;
    TokenCache out;
    uint64_t key = mix64(tokenizer_hash ^ 0x5bd1e995ULL);
    for (const auto& f : files) {
        std::error_code ec;
        const std::string abs = fs::absolute(f, ec).lexically_normal().string();
        name_hash = hash64(abs, name_hash);
        std::string text = read_file_bytes(f);
        key = hash64(abs, key);
        key = mix64(key ^ uint64_t(text.size()));
        key = mix64(key ^ uint64_t(mtime_ns(f)));
        key = mix64(key ^ hash64(text));
        out.n_bytes += int64_t(text.size());
        texts.push_back(std::move(text));
    }
    out.key = key;
    char name[64];
    std::snprintf(name, sizeof(name), "tokens-%016llx.bin",
                  static_cast<unsigned long long>(name_hash));
    const fs::path path = cache_dir / name;

    std::error_code ec;
    if (fs::exists(path, ec)) {
        try {
            TokenFile f = TokenFile::open(path);
            if (f.key() == key) {
                out.tokens = f;
                return out;
            }
        } catch (const Error&) {
            // corrupt or foreign: rebuild below
        }
    }

    const auto t0 = std::chrono::steady_clock::now();
    fs::create_directories(cache_dir, ec);
    FORGE_CHECK(!ec, "[data] cannot create cache folder ", cache_dir.string(), ": ", ec.message());
    const size_t vocab = tok.vocab_size();
    const uint32_t width = vocab <= 65535 ? 2 : 4;
    const fs::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(o, "[data] cannot write ", tmp.string());
        Header h{};
        std::memcpy(h.magic, kMagic, 8);
        h.width = width;
        h.key = key;
        o.write(reinterpret_cast<const char*>(&h), kHeaderBytes); // count patched below
        uint64_t n_tokens = 0;
        const auto eos = tok.eos_id();
        std::vector<uint16_t> buf16;
        std::vector<uint32_t> buf32;
        auto emit = [&](const std::vector<TokenId>& ids, const fs::path& src) {
            for (TokenId id : ids)
                FORGE_CHECK(id >= 0 && size_t(id) < vocab, "[data] tokenizer produced id ", id,
                            " outside its vocabulary of ", vocab, " in ", src.string());
            if (width == 2) {
                buf16.assign(ids.begin(), ids.end());
                o.write(reinterpret_cast<const char*>(buf16.data()),
                        std::streamsize(2 * buf16.size()));
            } else {
                buf32.assign(ids.begin(), ids.end());
                o.write(reinterpret_cast<const char*>(buf32.data()),
                        std::streamsize(4 * buf32.size()));
            }
            n_tokens += ids.size();
        };
        for (size_t fi = 0; fi < files.size(); ++fi) {
            auto pieces = safe_chunks(texts[fi], size_t(1) << 18);
            std::vector<std::string> owned(pieces.begin(), pieces.end());
            auto encoded = tok.encode_batch(owned, {}, n_threads);
            for (const auto& ids : encoded)
                emit(ids, files[fi]);
            if (eos)
                emit({*eos}, files[fi]);
            std::string().swap(texts[fi]);
        }
        h.n_tokens = n_tokens;
        o.seekp(0);
        o.write(reinterpret_cast<const char*>(&h), kHeaderBytes);
        o.close();
        FORGE_CHECK(o, "[data] failed writing ", tmp.string());
    }
    fs::rename(tmp, path, ec);
    FORGE_CHECK(!ec, "[data] cannot move ", tmp.string(), " to ", path.string(), ": ",
                ec.message());
    out.tokens = TokenFile::open(path);
    out.rebuilt = true;
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

// ------------------------------------------------------------------------------- sampling

uint64_t Rng::next() {
    state += 0x9e3779b97f4a7c15ULL;
    return mix64(state);
}

uint64_t Rng::below(uint64_t n) {
    FORGE_ASSERT(n > 0);
    return uint64_t((static_cast<unsigned __int128>(next()) * n) >> 64);
}

BatchSampler::BatchSampler(TokenFile tokens, int64_t begin, int64_t end, int64_t batch,
                           int64_t seq_len, Mode mode, uint64_t seed)
    : tokens_(std::move(tokens)), begin_(begin), end_(end), batch_(batch), seq_len_(seq_len),
      mode_(mode), rng_{mix64(seed ^ 0xda942042e4dd58b5ULL)}, cursor_(begin) {
    FORGE_CHECK(batch > 0 && seq_len > 0, "[data] batch and seq_len must be positive, got ", batch,
                " and ", seq_len);
    FORGE_CHECK(begin >= 0 && end <= tokens_.size() && begin <= end, "[data] bad token range [",
                begin, ", ", end, ")");
    FORGE_CHECK(end - begin >= seq_len + 1, "[data] this split has ", end - begin,
                " tokens; a sequence of --seq-len ", seq_len, " needs at least ", seq_len + 1,
                " (use more data or a shorter --seq-len)");
}

void BatchSampler::set_state(const State& s) {
    FORGE_CHECK(s.cursor >= begin_ && s.cursor <= end_, "[data] saved data cursor ", s.cursor,
                " is outside the split [", begin_, ", ", end_, ")");
    rng_.state = s.rng;
    cursor_ = s.cursor;
}

std::pair<Tensor, Tensor> BatchSampler::next() {
    const int64_t B = batch_, T = seq_len_;
    Tensor x = Tensor::empty({B, T}, DType::i64), y = Tensor::empty({B, T}, DType::i64);
    std::vector<int64_t> row(size_t(T + 1));
    int64_t* xd = x.data<int64_t>();
    int64_t* yd = y.data<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
        int64_t start;
        if (mode_ == Mode::random) {
            start = begin_ + int64_t(rng_.below(uint64_t(end_ - begin_ - T)));
        } else {
            if (cursor_ + T + 1 > end_)
                cursor_ = begin_; // wrap: next epoch
            start = cursor_;
            cursor_ += T;
        }
        tokens_.read(start, T + 1, row.data());
        std::copy(row.begin(), row.begin() + T, xd + b * T);
        std::copy(row.begin() + 1, row.end(), yd + b * T);
    }
    return {x, y};
}

} // namespace forge
