#include "tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/uniset.h>
#include <unicode/uchar.h>
#include <unicode/bytestream.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "error.hpp"
#include "utf8.hpp"

namespace dume {

using nlohmann::json;

namespace {

// SentencePiece's word-boundary mark, U+2581.
constexpr std::string_view kMetaspaceMark = "\xE2\x96\x81";
// The ids the file may use: the library's are u32, and a margin below that keeps an id pair
// packed into 64 bits distinct from the hash tables' empty marker.
constexpr std::uint64_t kMaxId = (std::uint64_t{1} << 31) - 1;
// The pre-tokenizer regex of ByteLevel(use_regex=true), as the library writes it.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// --- text helpers ---------------------------------------------------------------------------

// The code point at s[i] (valid UTF-8) and its length in bytes.
char32_t decode_utf8(std::string_view s, std::size_t i, std::size_t& length) {
  const auto c = static_cast<unsigned char>(s[i]);
  auto cont = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if (c < 0x80) {
    length = 1;
    return c;
  }
  if (c < 0xE0) {
    length = 2;
    return (static_cast<char32_t>(c & 0x1F) << 6) | cont(1);
  }
  if (c < 0xF0) {
    length = 3;
    return (static_cast<char32_t>(c & 0x0F) << 12) | (cont(1) << 6) | cont(2);
  }
  length = 4;
  return (static_cast<char32_t>(c & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
}

// The start of the code point that ends at s[end - 1].
std::size_t previous_char_start(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Unicode White_Space: Rust's char::is_whitespace and its regex crate's \s, which the library's
// added-token stripping uses.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The regex crate's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation,
// Join_Control), which decides whether a single_word added token stands alone.
bool is_word_char(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(cp, UCHAR_ALPHABETIC) || u_hasBinaryProperty(cp, UCHAR_JOIN_CONTROL)) return true;
  switch (u_charType(cp)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

// Rust's char::is_numeric (Nd, Nl, No), which the Digits pre-tokenizer splits at.
bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto type = u_charType(static_cast<UChar32>(c));
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

// The Punctuation pre-tokenizer's test: ASCII punctuation (which takes $+<=>^`| too) or a
// character of a P* category as the library's unicode_categories crate has them: Unicode 8.0's,
// where two characters since moved to other categories were still punctuation.
bool is_punctuation(char32_t c) {
  if (c < 0x80) return c > 0x20 && c < 0x7F && !((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'));
  if (c == 0x166D || c == 0x111C9) return true;
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  if (age[0] > 8) return false;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

bool is_ascii(std::string_view s) {
  std::uint64_t high = 0;
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    high |= w;
  }
  for (; i < s.size(); ++i) high |= static_cast<unsigned char>(s[i]);
  return (high & 0x8080808080808080ULL) == 0;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others are moved
// to U+0100 and up in byte order.
std::array<char32_t, 256> byte_level_chars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    chars[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return chars;
}

std::uint64_t hash_bytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ (s.size() * 0xC2B2AE3D27D4EB4FULL);
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 32;
  }
  if (i < s.size()) {
    std::uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
  }
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ULL;
  return h ^ (h >> 32);
}

// --- hash tables ----------------------------------------------------------------------------

// Open addressing from byte strings to 32-bit values, the keys in one arena: the vocabulary
// lookups and the word cache run once per pre-token, where std::unordered_map's allocations and
// std::string keys would cost more than the BPE itself. Slots are 16 bytes so that a probe of a
// large table (Llama 3's 128k tokens) touches one cache line.
class StringTable {
 public:
  explicit StringTable(std::size_t expected = 16) { rehash(std::bit_ceil(std::max<std::size_t>(16, expected * 2))); }

  const std::uint32_t* find(std::string_view key) const {
    const std::uint64_t h = hash_bytes(key);
    const auto tag = static_cast<std::uint32_t>(h >> 32);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key_length == kEmpty) return nullptr;
      if (slot.tag == tag && slot.key_length == key.size() &&
          std::memcmp(keys_.data() + slot.key_offset, key.data(), key.size()) == 0)
        return &slot.value;
    }
  }

  // Inserts or overwrites; false (and nothing stored) when the key arena would pass 4 GiB.
  bool set(std::string_view key, std::uint32_t value) {
    if (keys_.size() + key.size() > std::numeric_limits<std::uint32_t>::max() - 1) return false;
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    const std::uint64_t h = hash_bytes(key);
    const auto tag = static_cast<std::uint32_t>(h >> 32);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.key_length == kEmpty) {
        slot = {tag, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(key.size()), value};
        keys_.append(key);
        ++size_;
        return true;
      }
      if (slot.tag == tag && slot.key_length == key.size() &&
          std::memcmp(keys_.data() + slot.key_offset, key.data(), key.size()) == 0) {
        slot.value = value;
        return true;
      }
    }
  }

  std::size_t size() const { return size_; }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    size_ = 0;
  }

 private:
  static constexpr std::uint32_t kEmpty = std::numeric_limits<std::uint32_t>::max();
  struct Slot {
    std::uint32_t tag = 0;  // the hash's high half (the low bits pick the slot)
    std::uint32_t key_offset = 0;
    std::uint32_t key_length = kEmpty;
    std::uint32_t value = 0;
  };

  void rehash(std::size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    for (const Slot& slot : old) {
      if (slot.key_length == kEmpty) continue;
      const std::uint64_t h = hash_bytes(std::string_view(keys_).substr(slot.key_offset, slot.key_length));
      std::size_t i = h & mask_;
      while (slots_[i].key_length != kEmpty) i = (i + 1) & mask_;
      slots_[i] = slot;
    }
  }

  std::vector<Slot> slots_;
  std::string keys_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

// The merges: a pair of ids to the merge's rank and the id of the merged token.
class MergeTable {
 public:
  struct Merge {
    std::uint32_t rank;
    std::uint32_t new_id;
  };

  explicit MergeTable(std::size_t expected) {
    const std::size_t capacity = std::bit_ceil(std::max<std::size_t>(16, expected * 2));
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
  }

  // A later merge of the same pair replaces the earlier one, as the library's HashMap collect does.
  void set(std::uint32_t left, std::uint32_t right, Merge merge) {
    const std::uint64_t key = pack(left, right);
    for (std::size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = {key, merge};
        return;
      }
    }
  }

  const Merge* find(std::uint32_t left, std::uint32_t right) const {
    const std::uint64_t key = pack(left, right);
    for (std::size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].merge;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = std::numeric_limits<std::uint64_t>::max();
  struct Slot {
    std::uint64_t key = kEmpty;
    Merge merge{};
  };
  static std::uint64_t pack(std::uint32_t left, std::uint32_t right) {
    return (static_cast<std::uint64_t>(left) << 32) | right;
  }
  static std::uint64_t mix(std::uint64_t key) {
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ULL;
    return key ^ (key >> 29);
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

// --- per-thread scratch -----------------------------------------------------------------------

std::atomic<std::uint64_t> next_tokenizer_serial{1};

// What encode() reuses between calls on one thread: PCRE2 match data and JIT stack, buffers,
// the BPE work arrays and the word cache (valid for the tokenizer whose serial it holds).
struct Scratch {
  struct Symbol {
    std::uint32_t id;
    std::int32_t prev;
    std::int32_t next;
    bool removed;
  };
  struct QueuedMerge {
    std::uint32_t rank;
    std::uint32_t pos;
    std::uint32_t new_id;
  };

  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* match_context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  std::vector<std::string> step_buffers;
  std::string normalized;
  std::string normalize_tmp;
  std::vector<Symbol> symbols;
  std::vector<QueuedMerge> queue;
  std::vector<std::uint32_t> word_ids;

  std::uint64_t cache_owner = 0;
  StringTable cache{1 << 15};
  std::vector<std::uint32_t> cache_ids;  // the cached words' ids, one after another

  Scratch() {
    match_data = pcre2_match_data_create(1, nullptr);
    match_context = pcre2_match_context_create(nullptr);
    // Long runs of spaces or letters backtrack through the JIT stack; 32 KiB (the default) is
    // too little for documents with megabytes of whitespace.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!match_data || !match_context || !jit_stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(match_context, nullptr, jit_stack);
  }
  ~Scratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(match_context);
    pcre2_match_data_free(match_data);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

constexpr std::size_t kCacheMaxEntries = 1 << 16;
constexpr std::size_t kCacheMaxIds = 1 << 20;
constexpr std::size_t kCacheMaxWordBytes = 256;
// A cached word's value packs where its ids start in cache_ids and how many there are (at most
// two per byte, through byte-level byte fallback: under 1024).
constexpr unsigned kCacheCountBits = 10;
constexpr std::uint32_t kCacheCountMask = (1u << kCacheCountBits) - 1;
static_assert(2 * kCacheMaxWordBytes <= kCacheCountMask);
static_assert(((kCacheMaxIds + 2 * kCacheMaxWordBytes) << kCacheCountBits) <= std::numeric_limits<std::uint32_t>::max());

// --- regexes ---------------------------------------------------------------------------------

// The library compiles its patterns with Oniguruma (Ruby syntax), where \s is Unicode
// White_Space and \h a hex digit; PCRE2 with UCP reads both differently (its \s also takes
// U+180E, its \h is horizontal space), so they are spelled out for PCRE2.
std::string onig_to_pcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 == pattern.size()) {
      out += pattern[i];
      continue;
    }
    const char escaped = pattern[++i];
    switch (escaped) {
      case 's': out += "\\p{White_Space}"; break;
      case 'S': out += "\\P{White_Space}"; break;
      case 'h': out += "\\p{AHex}"; break;
      case 'H': out += "\\P{AHex}"; break;
      default:
        out += '\\';
        out += escaped;
    }
  }
  return out;
}

class Regex {
 public:
  // `literal`: the pattern is a plain string to find (Split's {"String": ...}).
  Regex(std::string_view pattern, bool literal, const std::string& where) : where_(where) {
    const std::string translated = literal ? std::string(pattern) : onig_to_pcre2(pattern);
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    // PCRE2_LITERAL refuses PCRE2_UCP ("invalid option bits"), which a literal does not need.
    // \C matches one byte even in UTF mode: its pieces would be invalid UTF-8, which the next
    // regex (matched without a UTF check) and the model's decoding read past; Oniguruma has no
    // such escape, so it is refused.
    const std::uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &error_code,
                          &error_offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof message);
      throw Error(where + ": pattern does not compile at offset " + std::to_string(error_offset) + ": " +
                  reinterpret_cast<const char*>(message));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Where the next search starts and where the last match ended: the onig crate's find_iter,
  // which the library splits and replaces with, yields empty matches too, but not one right where
  // the last match ended.
  struct Cursor {
    std::size_t from = 0;
    std::size_t last_end = std::string_view::npos;
  };

  // The next match in `subject` (valid UTF-8), empty ones included, as find_iter gives them.
  bool next(std::string_view subject, Cursor& cursor, std::size_t& begin, std::size_t& end, Scratch& scratch) const {
    while (cursor.from <= subject.size()) {
      const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
      const int rc = jit_ ? pcre2_jit_match(code_, text, subject.size(), cursor.from, 0, scratch.match_data,
                                            scratch.match_context)
                          : pcre2_match(code_, text, subject.size(), cursor.from, PCRE2_NO_UTF_CHECK,
                                        scratch.match_data, scratch.match_context);
      if (rc == PCRE2_ERROR_NOMATCH) return false;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw Error(where_ + ": matching failed: " + reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.match_data);
      begin = ovector[0];
      end = ovector[1];
      if (begin != end || end != cursor.last_end) {
        cursor.from = cursor.last_end = end;
        return true;
      }
      if (cursor.from == subject.size()) return false;
      std::size_t length;
      decode_utf8(subject, cursor.from, length);
      cursor.from += length;
    }
    return false;
  }

 private:
  std::string where_;  // the file and the pattern's key, for messages
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// --- splitting -------------------------------------------------------------------------------

// What a split cuts at: a regex's matches, each character of a class, or (the Whitespace
// pre-tokenizer's \w+|[^\w\s]+) each run of word characters or of other non-space ones.
enum class SplitPattern { kRegex, kNumeric, kPunctuation, kWhiteSpace, kWordOrSymbolRun };
// What becomes of the matches: the library's SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// The next match of a character-class pattern in `text` at or after `from`, which it moves past
// the match.
bool next_class_match(SplitPattern pattern, std::string_view text, std::size_t& from, std::size_t& begin,
                      std::size_t& end) {
  std::size_t length;
  while (from < text.size()) {
    const char32_t c = decode_utf8(text, from, length);
    begin = from;
    from += length;
    switch (pattern) {
      case SplitPattern::kNumeric:
        if (!is_numeric(c)) continue;
        break;
      case SplitPattern::kPunctuation:
        if (!is_punctuation(c)) continue;
        break;
      case SplitPattern::kWhiteSpace:
        if (!is_white_space(c)) continue;
        break;
      case SplitPattern::kWordOrSymbolRun: {
        if (is_white_space(c)) continue;
        const bool word = is_word_char(c);
        while (from < text.size()) {
          const char32_t d = decode_utf8(text, from, length);
          if (is_white_space(d) || is_word_char(d) != word) break;
          from += length;
        }
        break;
      }
      case SplitPattern::kRegex:
        return false;
    }
    end = from;
    return true;
  }
  return false;
}

// Cuts text of `size` bytes as the library's NormalizedString::split does: `next_match(begin,
// end)` gives the pattern's matches in order (empty ones too), which with the text between them
// make the segments; `invert` swaps which are matches; `behavior` drops the matches (Removed) or
// says which neighbours join. `emit(begin, end)` gets each non-empty piece, as
// PreTokenizedString::split keeps only those.
template <class NextMatch, class Emit>
void split_pieces(std::size_t size, NextMatch&& next_match, SplitBehavior behavior, bool invert, Emit&& emit) {
  // The piece being grown, and whether its last segment is a match. An empty piece at the start
  // that a segment joins is the same as a new piece.
  std::size_t piece_begin = 0, piece_end = 0;
  bool last_is_match = false;
  auto take = [&](std::size_t begin, std::size_t end, bool is_match) {
    is_match = is_match != invert;
    if (behavior == SplitBehavior::kRemoved) {
      if (!is_match && end > begin) emit(begin, end);
      return;
    }
    const bool joins = (behavior == SplitBehavior::kContiguous && is_match == last_is_match) ||
                       (behavior == SplitBehavior::kMergedWithPrevious && is_match && !last_is_match) ||
                       (behavior == SplitBehavior::kMergedWithNext && last_is_match && !is_match);
    if (!joins) {
      if (piece_end > piece_begin) emit(piece_begin, piece_end);
      piece_begin = begin;
    }
    piece_end = end;
    last_is_match = is_match;
  };
  std::size_t done = 0, begin, end;
  while (next_match(begin, end)) {
    if (done != begin) take(done, begin, false);
    take(begin, end, true);
    done = end;
  }
  if (done != size) take(done, size, false);
  if (piece_end > piece_begin) emit(piece_begin, piece_end);
}

// --- JSON reading --------------------------------------------------------------------------

// Field access on the untrusted file, every failure an Error naming the file and the key path.
class JsonReader {
 public:
  explicit JsonReader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw Error(file_ + ": " + where + " " + what);
  }
  const std::string& file() const { return file_; }

  // The key path of `key` inside `where` ("" is the top level).
  static std::string path(const std::string& where, const char* key) {
    return where.empty() ? std::string(key) : where + "." + key;
  }

  const json* optional_field(const json& object, const std::string& where, const char* key) const {
    if (!object.is_object()) fail(where.empty() ? "the top level" : where, "is not an object");
    const auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  const json& field(const json& object, const std::string& where, const char* key) const {
    const json* value = optional_field(object, where, key);
    if (!value) fail(path(where, key), "is missing");
    return *value;
  }
  std::string string(const json& object, const std::string& where, const char* key) const {
    const json& value = field(object, where, key);
    if (!value.is_string()) fail(path(where, key), "is not a string");
    return checked_utf8(value.get<std::string>(), path(where, key));
  }
  std::optional<std::string> optional_string(const json& object, const std::string& where, const char* key) const {
    if (!optional_field(object, where, key)) return std::nullopt;
    return string(object, where, key);
  }
  bool boolean(const json& object, const std::string& where, const char* key, bool fallback) const {
    if (!optional_field(object, where, key)) return fallback;
    return boolean(object, where, key);
  }
  bool boolean(const json& object, const std::string& where, const char* key) const {
    const json& value = field(object, where, key);
    if (!value.is_boolean()) fail(path(where, key), "is not true or false");
    return value.get<bool>();
  }
  std::uint32_t id(const json& value, const std::string& where) const {
    if (!value.is_number_integer() || value.get<std::int64_t>() < 0 ||
        value.get<std::uint64_t>() > kMaxId)
      fail(where, value.dump() + " is not a token id (an integer from 0 to " + std::to_string(kMaxId) + ")");
    return static_cast<std::uint32_t>(value.get<std::uint64_t>());
  }
  std::string checked_utf8(std::string s, const std::string& where) const {
    if (const auto bad = invalid_utf8_offset(s))
      fail(where, "is not valid UTF-8 (byte " + std::to_string(*bad) + ")");
    return s;
  }

 private:
  std::string file_;
};

std::string type_of(const JsonReader& reader, const json& object, const std::string& where) {
  return reader.string(object, where, "type");
}

// --- the parts of the pipeline -------------------------------------------------------------

enum class NormalizerKind { kNfc, kNfkc, kLowercase, kStrip, kPrepend, kReplace };
struct NormalizerStep {
  NormalizerKind kind;
  std::string text;              // Prepend's string, Replace's {"String": ...} pattern
  std::unique_ptr<Regex> regex;  // Replace's {"Regex": ...} pattern, or an empty String one
  std::string replacement;       // Replace's content
  bool strip_left = false, strip_right = false;
};

// Split also stands for the pre-tokenizers that are splits: Digits, Punctuation, Whitespace and
// WhitespaceSplit.
enum class PreTokenizerKind { kSplit, kByteLevel, kMetaspace };
enum class PrependScheme { kAlways, kFirst, kNever };
struct PreTokenizerStep {
  PreTokenizerKind kind;
  SplitPattern pattern = SplitPattern::kRegex;
  std::unique_ptr<Regex> regex;  // Split's pattern, ByteLevel's GPT-2 regex (when use_regex)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;  // Split: the text between the matches is what the behavior acts on
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = false;  // Metaspace
};

struct AddedToken {
  std::string content;  // what is matched: normalized already when `normalized`
  std::uint32_t id;
  bool single_word, lstrip, rstrip, normalized;
};

// Finds added tokens leftmost-longest, as the library's Aho-Corasick (MatchKind::LeftmostLongest)
// does: the earliest start, and at that start the longest token.
class AddedTokenMatcher {
 public:
  void add(const AddedToken* token) {
    if (token->content.empty()) return;
    auto& list = by_first_byte_[static_cast<unsigned char>(token->content[0])];
    list.push_back(token);
    std::stable_sort(list.begin(), list.end(),
                     [](const AddedToken* a, const AddedToken* b) { return a->content.size() > b->content.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  const AddedToken* find(std::string_view text, std::size_t from, std::size_t& begin) const {
    for (std::size_t i = from; i < text.size(); ++i) {
      const auto& list = by_first_byte_[static_cast<unsigned char>(text[i])];
      for (const AddedToken* token : list) {
        const std::string& c = token->content;
        if (c.size() <= text.size() - i && std::memcmp(text.data() + i, c.data(), c.size()) == 0) {
          begin = i;
          return token;
        }
      }
    }
    return nullptr;
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_byte_;
  bool empty_ = true;
};

}  // namespace

// --- the tokenizer ------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string file;
  std::string kind;
  std::uint64_t serial = next_tokenizer_serial.fetch_add(1);

  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  bool byte_level = false;  // the model sees bytes (through GPT-2's byte-to-unicode map)

  std::vector<std::unique_ptr<AddedToken>> added_tokens;
  AddedTokenMatcher raw_added;         // matched in the text as given
  AddedTokenMatcher normalized_added;  // matched in the normalized text

  // The model. Keys are the tokens' text, or their bytes for byte-level tokenizers.
  StringTable vocab;
  MergeTable merges{0};
  std::array<std::int64_t, 256> byte_ids{};  // byte-level: each byte's token (-1: none)
  // byte fallback: the <0xXX> tokens of a unit (a byte-level byte's char, or a char's bytes).
  std::array<std::int64_t, 256> fallback_byte_ids{};
  std::array<std::vector<std::uint32_t>, 256> byte_level_fallback;  // per byte; empty: none
  std::optional<std::uint32_t> unk_id;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  std::vector<std::uint32_t> prefix, suffix;
  std::size_t vocab_size = 0;

  // The model's vocabulary as the file writes it: token text to id.
  using TokenIds = std::unordered_map<std::string, std::uint32_t>;

  void parse(const json& root);
  static void check_top_level(const JsonReader& reader, const json& root);
  void parse_model(const JsonReader& reader, const json& model);
  void parse_normalizer(const JsonReader& reader, const json& node, const std::string& where);
  void read_pre_tokenizer(const JsonReader& reader, const json& root);
  void parse_pre_tokenizer(const JsonReader& reader, const json& node, const std::string& where);
  TokenIds read_vocab(const JsonReader& reader, const json& vocab_node);
  void index_vocab(const JsonReader& reader, const TokenIds& by_text);
  void index_bytes(const TokenIds& by_text);
  void read_unk_token(const JsonReader& reader, const json& model_node, const TokenIds& by_text);
  void read_merges(const JsonReader& reader, const json& model_node, const TokenIds& by_text);
  void parse_added_tokens(const JsonReader& reader, const json* list, const TokenIds& model_vocab);
  void parse_post_processor(const JsonReader& reader, const json& node, const std::string& where);
  bool known_id(std::uint32_t id) const;

  std::string normalize_string(std::string_view text) const;
  // `starts_at_origin`: whether the normalized text's first character is the text's own first
  // (not so once leading characters are stripped or replaced by nothing), which Metaspace's
  // prepend_scheme "first" asks.
  std::string_view normalize(std::string_view text, Scratch& scratch, bool& starts_at_origin) const;
  void encode_into(std::string_view text, std::vector<std::uint32_t>& out) const;
  void split_added(std::string_view text, const AddedTokenMatcher& matcher, bool at_origin, Scratch& scratch,
                   std::vector<std::uint32_t>& out, bool normalized_stage) const;
  void segment(std::string_view text, bool at_origin, Scratch& scratch, std::vector<std::uint32_t>& out) const;
  void pre_tokenize(std::size_t step, std::string_view piece, bool at_origin, Scratch& scratch,
                    std::vector<std::uint32_t>& out) const;
  void model(std::string_view word, Scratch& scratch, std::vector<std::uint32_t>& out) const;
  void merge_word(std::string_view word, Scratch& scratch) const;
  void split_units(std::string_view word, Scratch& scratch) const;
  void apply_merges(Scratch& scratch) const;
  void add_unit(std::uint32_t id, Scratch& scratch) const;
};

namespace {
std::vector<std::uint32_t> ids_of(const JsonReader& reader, const json& list, const std::string& where) {
  if (!list.is_array()) reader.fail(where, "is not an array");
  std::vector<std::uint32_t> ids;
  for (std::size_t i = 0; i < list.size(); ++i) ids.push_back(reader.id(list[i], where + "[" + std::to_string(i) + "]"));
  return ids;
}
}  // namespace

bool Tokenizer::Impl::known_id(std::uint32_t id) const { return id < vocab_size; }

void Tokenizer::Impl::parse(const json& root) {
  const JsonReader reader(file);
  check_top_level(reader, root);
  parse_model(reader, reader.field(root, "", "model"));
  if (const json* node = reader.optional_field(root, "", "normalizer"))
    parse_normalizer(reader, *node, "normalizer");
  read_pre_tokenizer(reader, root);
  const json& model_node = root.at("model");
  const TokenIds by_text = read_vocab(reader, model_node.at("vocab"));
  index_vocab(reader, by_text);
  index_bytes(by_text);
  read_unk_token(reader, model_node, by_text);
  read_merges(reader, model_node, by_text);
  parse_added_tokens(reader, reader.optional_field(root, "", "added_tokens"), by_text);
  if (const json* node = reader.optional_field(root, "", "post_processor"))
    parse_post_processor(reader, *node, "post_processor");
  // The file's "decoder" only turns ids back into text, which dume never does: it is not read.
}

void Tokenizer::Impl::check_top_level(const JsonReader& reader, const json& root) {
  if (!root.is_object()) reader.fail("the top level", "is not an object");
  for (const char* key : {"truncation", "padding"})
    if (reader.optional_field(root, "", key))
      reader.fail(key, "is set: dume encodes whole documents (set it to null)");
}

// The pre-tokenizer steps, ByteLevel last if at all, which makes the model see bytes.
void Tokenizer::Impl::read_pre_tokenizer(const JsonReader& reader, const json& root) {
  if (const json* node = reader.optional_field(root, "", "pre_tokenizer"))
    parse_pre_tokenizer(reader, *node, "pre_tokenizer");
  for (std::size_t i = 0; i < pre_tokenizer.size(); ++i)
    if (pre_tokenizer[i].kind == PreTokenizerKind::kByteLevel && i + 1 != pre_tokenizer.size())
      reader.fail("pre_tokenizer", "has ByteLevel before other pre-tokenizers (dume supports it last only)");
  byte_level = !pre_tokenizer.empty() && pre_tokenizer.back().kind == PreTokenizerKind::kByteLevel;
  kind = byte_level ? "byte-level BPE" : "SentencePiece BPE";
}

// model.vocab's ids, checked, by token text; sets vocab_size to one past the largest.
Tokenizer::Impl::TokenIds Tokenizer::Impl::read_vocab(const JsonReader& reader, const json& vocab_node) {
  TokenIds by_text;
  by_text.reserve(vocab_node.size());
  std::uint64_t max_id = 0;
  bool any_id = false;
  for (const auto& [token, id_node] : vocab_node.items()) {
    const std::string where = "model.vocab['" + token + "']";
    const std::uint32_t id = reader.id(id_node, where);
    reader.checked_utf8(token, where);
    by_text[token] = id;
    max_id = std::max<std::uint64_t>(max_id, id);
    any_id = true;
  }
  vocab_size = any_id ? static_cast<std::size_t>(max_id) + 1 : 0;
  return by_text;
}

// The vocabulary is keyed by what the model sees: bytes, for byte-level tokenizers.
void Tokenizer::Impl::index_vocab(const JsonReader& reader, const TokenIds& by_text) {
  const std::array<char32_t, 256> chars = byte_level_chars();
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  for (std::size_t b = 0; b < 256; ++b) char_to_byte[chars[b]] = static_cast<unsigned char>(b);
  vocab = StringTable(by_text.size());
  for (const auto& [token, id] : by_text) {
    if (!byte_level) {
      if (!vocab.set(token, id)) reader.fail("model.vocab", "is too large (over 4 GiB of token text)");
      continue;
    }
    // A token with a char outside the byte map can never match a byte-level pre-token.
    std::string bytes;
    bool reachable = true;
    for (std::size_t i = 0, length = 0; i < token.size() && reachable; i += length) {
      const auto it = char_to_byte.find(decode_utf8(token, i, length));
      if (it == char_to_byte.end()) reachable = false;
      else bytes += static_cast<char>(it->second);
    }
    if (reachable && !vocab.set(bytes, id)) reader.fail("model.vocab", "is too large (over 4 GiB of token text)");
  }
}

// Each byte's token (byte-level) and the byte fallback tokens.
void Tokenizer::Impl::index_bytes(const TokenIds& by_text) {
  const std::array<char32_t, 256> chars = byte_level_chars();
  // Byte fallback tokens are looked up by text (<0xXX>) whatever the pre-tokenizer.
  for (std::size_t b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned>(b));
    const auto it = by_text.find(name);
    fallback_byte_ids[b] = it == by_text.end() ? std::int64_t{-1} : std::int64_t{it->second};
  }
  for (std::size_t b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, chars[b]);
    const auto it = by_text.find(ch);
    byte_ids[b] = it == by_text.end() ? std::int64_t{-1} : std::int64_t{it->second};
    // Byte fallback on a byte-level model goes through the bytes of the mapped char.
    bool all = true;
    std::vector<std::uint32_t> ids;
    for (char c : ch) {
      const std::int64_t fallback = fallback_byte_ids[static_cast<unsigned char>(c)];
      if (fallback < 0) all = false;
      else ids.push_back(static_cast<std::uint32_t>(fallback));
    }
    if (all) byte_level_fallback[b] = std::move(ids);
  }
}

void Tokenizer::Impl::read_unk_token(const JsonReader& reader, const json& model_node, const TokenIds& by_text) {
  if (const auto unk = reader.optional_string(model_node, "model", "unk_token")) {
    const auto it = by_text.find(*unk);
    if (it == by_text.end()) reader.fail("model.unk_token", "'" + *unk + "' is not in model.vocab");
    unk_id = it->second;
  }
}

// Merges: "a b" strings or ["a", "b"] pairs, the merged token in the vocabulary too.
void Tokenizer::Impl::read_merges(const JsonReader& reader, const json& model_node, const TokenIds& by_text) {
  const json& merges_node = reader.field(model_node, "model", "merges");
  if (!merges_node.is_array()) reader.fail("model.merges", "is not an array");
  merges = MergeTable(merges_node.size());
  for (std::size_t rank = 0; rank < merges_node.size(); ++rank) {
    const std::string where = "model.merges[" + std::to_string(rank) + "]";
    const json& merge = merges_node[rank];
    std::string left, right;
    if (merge.is_string()) {
      const std::string& text = merge.get_ref<const std::string&>();
      const std::size_t space = text.find(' ');
      if (space == std::string::npos) reader.fail(where, "'" + text + "' is not two tokens separated by a space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      reader.fail(where, "is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto lookup = [&](const std::string& token, const char* what) {
      const auto it = by_text.find(token);
      if (it == by_text.end()) reader.fail(where, std::string(what) + " '" + token + "', which is not in model.vocab");
      return it->second;
    };
    const std::uint32_t left_id = lookup(left, "names"), right_id = lookup(right, "names"),
                        new_id = lookup(left + right, "makes");
    merges.set(left_id, right_id, {static_cast<std::uint32_t>(rank), new_id});
  }
}

void Tokenizer::Impl::parse_model(const JsonReader& reader, const json& model) {
  const std::string type = type_of(reader, model, "model");
  if (type != "BPE") reader.fail("model.type", "'" + type + "' is not supported (dume reads BPE tokenizers)");
  const json& vocab_node = reader.field(model, "model", "vocab");
  if (!vocab_node.is_object()) reader.fail("model.vocab", "is not an object");
  if (const json* dropout = reader.optional_field(model, "model", "dropout")) {
    if (!dropout->is_number()) reader.fail("model.dropout", "is not a number");
    if (dropout->get<double>() != 0.0)
      reader.fail("model.dropout", dropout->dump() + " is not supported (BPE dropout is random; set it to null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto value = reader.optional_string(model, "model", key);
    if (value && !value->empty())
      reader.fail(std::string("model.") + key, "'" + *value + "' is not supported");
  }
  fuse_unk = reader.boolean(model, "model", "fuse_unk", false);
  byte_fallback = reader.boolean(model, "model", "byte_fallback", false);
  ignore_merges = reader.boolean(model, "model", "ignore_merges", false);
}

void Tokenizer::Impl::parse_normalizer(const JsonReader& reader, const json& node, const std::string& where) {
  const std::string type = type_of(reader, node, where);
  NormalizerStep step;
  if (type == "Sequence") {
    const json& list = reader.field(node, where, "normalizers");
    if (!list.is_array()) reader.fail(where + ".normalizers", "is not an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      if (!list[i].is_null()) parse_normalizer(reader, list[i], where + ".normalizers[" + std::to_string(i) + "]");
    return;
  } else if (type == "NFC") {
    step.kind = NormalizerKind::kNfc;
  } else if (type == "NFKC") {
    step.kind = NormalizerKind::kNfkc;
  } else if (type == "Lowercase") {
    step.kind = NormalizerKind::kLowercase;
  } else if (type == "Strip") {
    step.kind = NormalizerKind::kStrip;
    step.strip_left = reader.boolean(node, where, "strip_left");
    step.strip_right = reader.boolean(node, where, "strip_right");
  } else if (type == "Prepend") {
    step.kind = NormalizerKind::kPrepend;
    step.text = reader.string(node, where, "prepend");
  } else if (type == "Replace") {
    step.kind = NormalizerKind::kReplace;
    const json& pattern = reader.field(node, where, "pattern");
    const std::string at = where + ".pattern";
    if (pattern.is_object() && pattern.contains("Regex")) {
      step.regex = std::make_unique<Regex>(reader.string(pattern, at, "Regex"), false, reader.file() + ": " + at + ".Regex");
    } else if (pattern.is_object() && pattern.contains("String")) {
      step.text = reader.string(pattern, at, "String");
      // An empty string matches between every two characters, which only the regex path finds.
      if (step.text.empty()) step.regex = std::make_unique<Regex>("", true, reader.file() + ": " + at + ".String");
    } else {
      reader.fail(at, "is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    step.replacement = reader.string(node, where, "content");
  } else {
    reader.fail(where, "'" + type +
                           "' is not supported (dume supports NFC, NFKC, Lowercase, Strip, Replace, Prepend and "
                           "Sequence)");
  }
  normalizer.push_back(std::move(step));
}

namespace {
SplitBehavior split_behavior(const JsonReader& reader, const std::string& name, const std::string& where) {
  static constexpr std::pair<std::string_view, SplitBehavior> kNames[] = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous}};
  for (const auto& [known, behavior] : kNames)
    if (name == known) return behavior;
  reader.fail(where, "'" + name + "' is not Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}
}  // namespace

void Tokenizer::Impl::parse_pre_tokenizer(const JsonReader& reader, const json& node, const std::string& where) {
  const std::string type = type_of(reader, node, where);
  if (type == "Sequence") {
    const json& list = reader.field(node, where, "pretokenizers");
    if (!list.is_array()) reader.fail(where + ".pretokenizers", "is not an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      if (!list[i].is_null()) parse_pre_tokenizer(reader, list[i], where + ".pretokenizers[" + std::to_string(i) + "]");
    return;
  }
  PreTokenizerStep step;
  step.kind = PreTokenizerKind::kSplit;
  if (type == "Split") {
    const json& pattern = reader.field(node, where, "pattern");
    step.behavior = split_behavior(reader, reader.string(node, where, "behavior"), where + ".behavior");
    step.invert = reader.boolean(node, where, "invert", false);
    if (pattern.is_object() && pattern.contains("Regex"))
      step.regex = std::make_unique<Regex>(reader.string(pattern, where + ".pattern", "Regex"), false,
                                           reader.file() + ": " + where + ".pattern.Regex");
    else if (pattern.is_object() && pattern.contains("String"))
      step.regex = std::make_unique<Regex>(reader.string(pattern, where + ".pattern", "String"), true,
                                           reader.file() + ": " + where + ".pattern.String");
    else
      reader.fail(where + ".pattern", "is neither {\"Regex\": ...} nor {\"String\": ...}");
  } else if (type == "Digits") {
    step.pattern = SplitPattern::kNumeric;
    step.behavior =
        reader.boolean(node, where, "individual_digits") ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
  } else if (type == "Punctuation") {
    step.pattern = SplitPattern::kPunctuation;
    step.behavior = split_behavior(reader, reader.optional_string(node, where, "behavior").value_or("Isolated"),
                                   where + ".behavior");
  } else if (type == "WhitespaceSplit") {
    step.pattern = SplitPattern::kWhiteSpace;
    step.behavior = SplitBehavior::kRemoved;
  } else if (type == "Whitespace") {
    // The library keeps the matches of \w+|[^\w\s]+ and drops the rest.
    step.pattern = SplitPattern::kWordOrSymbolRun;
    step.behavior = SplitBehavior::kRemoved;
    step.invert = true;
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerKind::kByteLevel;
    step.add_prefix_space = reader.boolean(node, where, "add_prefix_space", true);
    if (reader.boolean(node, where, "use_regex", true))
      step.regex = std::make_unique<Regex>(kGpt2Pattern, false, reader.file() + ": " + where + " (GPT-2 regex)");
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerKind::kMetaspace;
    step.replacement = reader.optional_string(node, where, "replacement").value_or(std::string(kMetaspaceMark));
    std::size_t length = 0;
    if (step.replacement.empty() || (decode_utf8(step.replacement, 0, length), length != step.replacement.size()))
      reader.fail(where + ".replacement", "is not one character");
    step.split = reader.boolean(node, where, "split", true);
    if (const auto scheme = reader.optional_string(node, where, "prepend_scheme")) {
      if (*scheme == "always") step.prepend_scheme = PrependScheme::kAlways;
      else if (*scheme == "first") step.prepend_scheme = PrependScheme::kFirst;
      else if (*scheme == "never") step.prepend_scheme = PrependScheme::kNever;
      else reader.fail(where + ".prepend_scheme", "'" + *scheme + "' is not always, first or never");
    } else {
      // Files from before prepend_scheme say add_prefix_space.
      step.prepend_scheme =
          reader.boolean(node, where, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
    }
  } else {
    reader.fail(where, "'" + type +
                           "' is not supported (dume supports Split, Digits, Punctuation, Whitespace, "
                           "WhitespaceSplit, ByteLevel, Metaspace and Sequence)");
  }
  pre_tokenizer.push_back(std::move(step));
}

void Tokenizer::Impl::parse_added_tokens(const JsonReader& reader, const json* list, const TokenIds& model_vocab) {
  if (!list) return;
  if (!list->is_array()) reader.fail("added_tokens", "is not an array");
  // The library does not take the ids in the file: it gives each token its id in the model's
  // vocabulary, or the next one after the vocabulary and the tokens added so far
  // (AddedVocabulary::add_tokens). A file whose ids differ would be tokenized with other ids
  // than it says, so it is refused.
  std::unordered_map<std::string, std::uint32_t> added_ids;
  std::optional<std::uint32_t> max_added;
  const std::size_t model_entries = model_vocab.size();
  std::vector<AddedToken> specials, others;
  for (std::size_t i = 0; i < list->size(); ++i) {
    const json& node = (*list)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    AddedToken token;
    token.content = reader.string(node, where, "content");
    token.id = reader.id(reader.field(node, where, "id"), where + ".id");
    const bool special = reader.boolean(node, where, "special", false);
    token.single_word = reader.boolean(node, where, "single_word", false);
    token.lstrip = reader.boolean(node, where, "lstrip", false);
    token.rstrip = reader.boolean(node, where, "rstrip", false);
    token.normalized = reader.boolean(node, where, "normalized", !special);
    if (token.content.empty()) continue;  // the library ignores it too
    if (added_ids.contains(token.content)) reader.fail(where, "'" + token.content + "' is listed twice");

    std::uint32_t library_id;
    if (const auto it = model_vocab.find(token.content); it != model_vocab.end()) {
      library_id = it->second;
    } else if (!max_added) {
      library_id = static_cast<std::uint32_t>(model_entries);
    } else {
      library_id = *max_added >= model_entries || model_entries == 0 ? *max_added + 1
                                                                      : static_cast<std::uint32_t>(model_entries);
    }
    if (library_id != token.id)
      reader.fail(where + ".id", std::to_string(token.id) + " of '" + token.content + "' is not the id " +
                                     std::to_string(library_id) + " the tokenizers library gives it");
    added_ids.emplace(token.content, token.id);
    max_added = std::max(max_added.value_or(0), token.id);
    vocab_size = std::max<std::size_t>(vocab_size, std::size_t{token.id} + 1);
    (special ? specials : others).push_back(std::move(token));
  }
  // Special tokens first, as the library's refresh_added_tokens lists them.
  for (auto* group : {&specials, &others})
    for (AddedToken& token : *group) {
      // Normalized tokens are matched in normalized text as the normalizer writes them.
      if (token.normalized) token.content = normalize_string(token.content);
      added_tokens.push_back(std::make_unique<AddedToken>(std::move(token)));
      const AddedToken* added = added_tokens.back().get();
      (added->normalized ? normalized_added : raw_added).add(added);
    }
}

void Tokenizer::Impl::parse_post_processor(const JsonReader& reader, const json& node, const std::string& where) {
  const std::string type = type_of(reader, node, where);
  auto check = [&](std::uint32_t id, const std::string& at) {
    if (!known_id(id))
      reader.fail(at, "id " + std::to_string(id) + " is beyond the vocabulary (" + std::to_string(vocab_size) + " ids)");
    return id;
  };
  if (type == "Sequence") {
    const json& list = reader.field(node, where, "processors");
    if (!list.is_array()) reader.fail(where + ".processors", "is not an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      if (!list[i].is_null()) parse_post_processor(reader, list[i], where + ".processors[" + std::to_string(i) + "]");
  } else if (type == "ByteLevel") {
    // It only trims offsets.
  } else if (type == "TemplateProcessing") {
    const json& single = reader.field(node, where, "single");
    const json& special_tokens = reader.field(node, where, "special_tokens");
    if (!single.is_array()) reader.fail(where + ".single", "is not an array");
    if (!special_tokens.is_object()) reader.fail(where + ".special_tokens", "is not an object");
    std::vector<std::uint32_t> before, after;
    bool seen_sequence = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string at = where + ".single[" + std::to_string(i) + "]";
      const json& piece = single[i];
      if (const json* sequence = piece.is_object() ? reader.optional_field(piece, at, "Sequence") : nullptr) {
        const std::string sequence_id = reader.string(*sequence, at + ".Sequence", "id");
        if (sequence_id != "A" || seen_sequence) reader.fail(at, "is not the one sequence $A of a single template");
        seen_sequence = true;
      } else if (const json* special = piece.is_object() ? reader.optional_field(piece, at, "SpecialToken") : nullptr) {
        const std::string name = reader.string(*special, at + ".SpecialToken", "id");
        const json* entry = reader.optional_field(special_tokens, where + ".special_tokens", name.c_str());
        if (!entry) reader.fail(at, "names '" + name + "', which is not in " + where + ".special_tokens");
        const std::string entry_where = where + ".special_tokens['" + name + "']";
        for (std::uint32_t id : ids_of(reader, reader.field(*entry, entry_where, "ids"), entry_where + ".ids"))
          (seen_sequence ? after : before).push_back(check(id, entry_where + ".ids"));
      } else {
        reader.fail(at, "is neither {\"Sequence\": ...} nor {\"SpecialToken\": ...}");
      }
    }
    if (!seen_sequence) reader.fail(where + ".single", "has no $A");
    // A later processor wraps what the earlier ones made.
    prefix.insert(prefix.begin(), before.begin(), before.end());
    suffix.insert(suffix.end(), after.begin(), after.end());
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto token_id = [&](const char* key) {
      const json& pair = reader.field(node, where, key);
      const std::string at = where + "." + key;
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string()) reader.fail(at, "is not [token, id]");
      return check(reader.id(pair[1], at + "[1]"), at);
    };
    prefix.insert(prefix.begin(), token_id("cls"));
    suffix.push_back(token_id("sep"));
  } else {
    reader.fail(where, "'" + type +
                           "' is not supported (dume supports TemplateProcessing, ByteLevel, RobertaProcessing, "
                           "BertProcessing and Sequence)");
  }
}

// --- normalization ---------------------------------------------------------------------------

namespace {
// NFC or NFKC as the library's unicode-normalization-alignments crate does them: with Unicode
// 9.0's tables, so ICU's normalizer restricted to the characters assigned by then; the later
// ones pass through unchanged, as characters unknown to the crate do.
const icu::Normalizer2& unicode_9_normalizer(NormalizerKind kind) {
  auto make = [](const char* name, const icu::Normalizer2* (*instance)(UErrorCode&)) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* full = instance(status);
    auto* assigned = new icu::UnicodeSet(icu::UnicodeString("[:age=9.0:]"), status);
    if (U_FAILURE(status))
      throw Error(std::string("tokenizer: ICU's ") + name + " is unavailable: " + u_errorName(status));
    assigned->freeze();
    return new icu::FilteredNormalizer2(*full, *assigned);  // kept for the process's lifetime
  };
  static const icu::Normalizer2* nfc = make("NFC", icu::Normalizer2::getNFCInstance);
  static const icu::Normalizer2* nfkc = make("NFKC", icu::Normalizer2::getNFKCInstance);
  return kind == NormalizerKind::kNfkc ? *nfkc : *nfc;
}

void unicode_normalize(NormalizerKind kind, std::string_view text, std::string& out) {
  const char* name = kind == NormalizerKind::kNfkc ? "NFKC" : "NFC";
  const icu::Normalizer2* normalizer = &unicode_9_normalizer(kind);
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(text.data(), static_cast<std::int32_t>(text.size()));
  if (normalizer->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    out.assign(text);
    return;
  }
  status = U_ZERO_ERROR;
  out.clear();
  icu::StringByteSink<std::string> sink(&out, static_cast<std::int32_t>(text.size()));
  normalizer->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status))
    throw Error(std::string("tokenizer: ") + name + " normalization failed: " + u_errorName(status));
}

// The library's Lowercase: Rust's char::to_lowercase on each character alone, so the simple
// mappings plus İ's two characters (its one unconditional full mapping), and Σ is σ even at the
// end of a word (no final sigma, which str::to_lowercase and ICU's string lowering apply).
void lowercase(std::string_view text, std::string& out) {
  out.clear();
  for (std::size_t i = 0, length; i < text.size(); i += length) {
    const char32_t c = decode_utf8(text, i, length);
    if (c < 0x80) out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    else if (c == 0x130) out += "i\xCC\x87";
    else append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
  }
}

void replace_all(std::string_view text, std::string_view from, std::string_view to, std::string& out) {
  out.clear();
  std::size_t start = 0;
  for (std::size_t hit; (hit = text.find(from, start)) != std::string_view::npos; start = hit + from.size()) {
    out.append(text, start, hit - start);
    out.append(to);
  }
  out.append(text, start);
}

// Every match of `regex` (empty ones too, as NormalizedString::replace takes them) replaced by
// `to`; true when a non-empty match at the start was replaced by nothing.
bool replace_matches(const Regex& regex, std::string_view text, std::string_view to, std::string& out,
                     Scratch& scratch) {
  out.clear();
  Regex::Cursor cursor;
  std::size_t done = 0, begin, end;
  bool removed_start = false;
  while (regex.next(text, cursor, begin, end, scratch)) {
    removed_start = removed_start || (begin == 0 && end > 0 && to.empty());
    out.append(text, done, begin - done);
    out.append(to);
    done = end;
  }
  out.append(text, done);
  return removed_start;
}
}  // namespace

// The normalizer applied to `text`; the view lives in the scratch (or is `text` itself).
std::string_view Tokenizer::Impl::normalize(std::string_view text, Scratch& scratch, bool& starts_at_origin) const {
  starts_at_origin = true;
  if (normalizer.empty()) return text;
  std::string& current = scratch.normalized;
  std::string& tmp = scratch.normalize_tmp;
  current.assign(text);
  for (const NormalizerStep& step : normalizer) {
    switch (step.kind) {
      case NormalizerKind::kNfc:
      case NormalizerKind::kNfkc:
        if (is_ascii(current)) continue;
        unicode_normalize(step.kind, current, tmp);
        break;
      case NormalizerKind::kLowercase:
        if (is_ascii(current) && std::none_of(current.begin(), current.end(), [](char c) { return c >= 'A' && c <= 'Z'; }))
          continue;
        lowercase(current, tmp);
        break;
      case NormalizerKind::kStrip: {
        std::size_t begin = 0, end = current.size(), length;
        while (step.strip_left && begin < end && is_white_space(decode_utf8(current, begin, length))) begin += length;
        while (step.strip_right && end > begin &&
               is_white_space(decode_utf8(current, previous_char_start(current, end), length)))
          end -= length;
        if (begin == 0 && end == current.size()) continue;
        starts_at_origin = starts_at_origin && begin == 0;
        tmp.assign(current, begin, end - begin);
        break;
      }
      case NormalizerKind::kPrepend:
        if (current.empty()) continue;
        tmp.assign(step.text);
        tmp.append(current);
        break;
      case NormalizerKind::kReplace:
        if (step.regex) {
          if (replace_matches(*step.regex, current, step.replacement, tmp, scratch)) starts_at_origin = false;
          break;
        }
        if (current.find(step.text) == std::string::npos) continue;
        if (step.replacement.empty() && current.starts_with(step.text)) starts_at_origin = false;
        replace_all(current, step.text, step.replacement, tmp);
        break;
    }
    current.swap(tmp);
  }
  return current;
}

std::string Tokenizer::Impl::normalize_string(std::string_view text) const {
  Scratch& scratch = thread_scratch();
  bool starts_at_origin;
  return std::string(normalize(text, scratch, starts_at_origin));
}

// --- encoding ------------------------------------------------------------------------------

// Splits `text` at the added tokens `matcher` finds (AddedVocabulary::find_matches, with its
// single_word, lstrip and rstrip rules) and passes the rest on.
void Tokenizer::Impl::split_added(std::string_view text, const AddedTokenMatcher& matcher, bool at_origin,
                                  Scratch& scratch, std::vector<std::uint32_t>& out, bool normalized_stage) const {
  auto pass_on = [&](std::size_t begin, std::size_t end) {
    const std::string_view part = text.substr(begin, end - begin);
    const bool origin = at_origin && begin == 0;
    if (normalized_stage) pre_tokenize(0, part, origin, scratch, out);
    else segment(part, origin, scratch, out);
  };
  if (matcher.empty()) {
    pass_on(0, text.size());
    return;
  }
  std::size_t done = 0;  // the end of the last added token taken
  std::size_t search = 0;
  std::size_t found;
  while (const AddedToken* token = matcher.find(text, search, found)) {
    std::size_t start = found, stop = found + token->content.size();
    search = stop;
    if (token->single_word) {
      std::size_t length;
      const bool word_before = start > 0 && is_word_char(decode_utf8(text, previous_char_start(text, start), length));
      const bool word_after = stop < text.size() && is_word_char(decode_utf8(text, stop, length));
      if (word_before || word_after) continue;
    }
    if (token->lstrip) {
      // Spaces an earlier token took stay with it (the library's max with start_offset).
      std::size_t new_start = start, length;
      while (new_start > done) {
        const std::size_t prev = previous_char_start(text, new_start);
        if (!is_white_space(decode_utf8(text, prev, length))) break;
        new_start = prev;
      }
      start = new_start;
    }
    if (token->rstrip) {
      std::size_t length;
      while (stop < text.size() && is_white_space(decode_utf8(text, stop, length))) stop += length;
    }
    if (done < start) pass_on(done, start);
    out.push_back(token->id);
    done = stop;
  }
  if (done < text.size()) pass_on(done, text.size());
}

// A piece of text between added tokens: normalized, then searched for the normalized added tokens.
void Tokenizer::Impl::segment(std::string_view text, bool at_origin, Scratch& scratch,
                              std::vector<std::uint32_t>& out) const {
  if (text.empty()) return;
  bool starts_at_origin;
  const std::string_view normalized = normalize(text, scratch, starts_at_origin);
  at_origin = at_origin && starts_at_origin;
  if (normalized_added.empty()) {
    pre_tokenize(0, normalized, at_origin, scratch, out);
    return;
  }
  // The matcher's pieces are views of the normalized text, which the next segment's normalize()
  // overwrites: keep a copy for this one.
  const std::string copy(normalized);
  split_added(copy, normalized_added, at_origin, scratch, out, true);
}

void Tokenizer::Impl::pre_tokenize(std::size_t step_index, std::string_view piece, bool at_origin, Scratch& scratch,
                                   std::vector<std::uint32_t>& out) const {
  if (piece.empty()) return;
  if (step_index == pre_tokenizer.size()) {
    model(piece, scratch, out);
    return;
  }
  const PreTokenizerStep& step = pre_tokenizer[step_index];
  std::string& buffer = scratch.step_buffers[step_index];
  auto split = [&](std::string_view text) {
    auto emit = [&](std::size_t begin, std::size_t end) {
      pre_tokenize(step_index + 1, text.substr(begin, end - begin), at_origin && begin == 0, scratch, out);
    };
    if (step.pattern == SplitPattern::kRegex) {
      Regex::Cursor cursor;
      auto next = [&](std::size_t& begin, std::size_t& end) { return step.regex->next(text, cursor, begin, end, scratch); };
      split_pieces(text.size(), next, step.behavior, step.invert, emit);
    } else {
      std::size_t from = 0;
      auto next = [&](std::size_t& begin, std::size_t& end) {
        return next_class_match(step.pattern, text, from, begin, end);
      };
      split_pieces(text.size(), next, step.behavior, step.invert, emit);
    }
  };
  switch (step.kind) {
    case PreTokenizerKind::kSplit:
      split(piece);
      return;
    case PreTokenizerKind::kByteLevel: {
      std::string_view text = piece;
      if (step.add_prefix_space && piece[0] != ' ') {
        buffer.assign(1, ' ');
        buffer.append(piece);
        text = buffer;
      }
      if (step.regex) split(text);
      else pre_tokenize(step_index + 1, text, at_origin, scratch, out);
      return;
    }
    case PreTokenizerKind::kMetaspace: {
      buffer.clear();
      const bool prepend = !piece.starts_with(step.replacement) && !piece.starts_with(' ') &&
                           (step.prepend_scheme == PrependScheme::kAlways ||
                            (step.prepend_scheme == PrependScheme::kFirst && at_origin));
      if (prepend) buffer.append(step.replacement);
      replace_all(piece, " ", step.replacement, scratch.normalize_tmp);
      buffer.append(scratch.normalize_tmp);
      if (!step.split) {
        pre_tokenize(step_index + 1, buffer, at_origin, scratch, out);
        return;
      }
      // MergedWithNext: each replacement char starts a piece.
      const std::string_view text = buffer;
      std::size_t start = 0;
      for (std::size_t hit; (hit = text.find(step.replacement, start + 1)) != std::string_view::npos; start = hit)
        pre_tokenize(step_index + 1, text.substr(start, hit - start), at_origin && start == 0, scratch, out);
      pre_tokenize(step_index + 1, text.substr(start), at_origin && start == 0, scratch, out);
      return;
    }
  }
}

void Tokenizer::Impl::add_unit(std::uint32_t id, Scratch& scratch) const {
  const auto index = static_cast<std::int32_t>(scratch.symbols.size());
  scratch.symbols.push_back({id, index - 1, index + 1, false});
}

// The library's BPE::merge_word and Word::merge_all, step for step: units are looked up (byte
// fallback, then unk), then merges are applied lowest rank first, leftmost on ties, through a
// heap whose stale entries are skipped the way the library skips them.
void Tokenizer::Impl::merge_word(std::string_view word, Scratch& scratch) const {
  split_units(word, scratch);
  apply_merges(scratch);
}

// The word's units into scratch.symbols: vocabulary tokens, else byte fallback, else unk.
void Tokenizer::Impl::split_units(std::string_view word, Scratch& scratch) const {
  auto& symbols = scratch.symbols;
  symbols.clear();
  constexpr std::int64_t kNone = -1;
  std::int64_t pending_unk = kNone;  // an unk not yet added (fuse_unk grows it)
  auto unknown = [&]() {
    if (!unk_id) return;
    if (pending_unk != kNone && !fuse_unk) add_unit(static_cast<std::uint32_t>(pending_unk), scratch);
    pending_unk = *unk_id;
  };
  auto known = [&](std::uint32_t id) {
    if (pending_unk != kNone) {
      add_unit(static_cast<std::uint32_t>(pending_unk), scratch);
      pending_unk = kNone;
    }
    add_unit(id, scratch);
  };
  if (byte_level) {
    for (char c : word) {
      const auto b = static_cast<unsigned char>(c);
      if (byte_ids[b] >= 0) {
        known(static_cast<std::uint32_t>(byte_ids[b]));
      } else if (byte_fallback && !byte_level_fallback[b].empty()) {
        for (std::uint32_t id : byte_level_fallback[b]) add_unit(id, scratch);
      } else {
        unknown();
      }
    }
  } else {
    for (std::size_t i = 0, length = 0; i < word.size(); i += length) {
      decode_utf8(word, i, length);
      const std::string_view unit = word.substr(i, length);
      if (const std::uint32_t* id = vocab.find(unit)) {
        known(*id);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (char c : unit) all = all && fallback_byte_ids[static_cast<unsigned char>(c)] >= 0;
        if (all) {
          for (char c : unit) add_unit(static_cast<std::uint32_t>(fallback_byte_ids[static_cast<unsigned char>(c)]), scratch);
          continue;
        }
      }
      unknown();
    }
  }
  if (pending_unk != kNone) add_unit(static_cast<std::uint32_t>(pending_unk), scratch);
  if (!symbols.empty()) symbols.back().next = -1;
}

// Merges scratch.symbols, lowest rank first, leftmost on ties: merged-away symbols are marked removed.
void Tokenizer::Impl::apply_merges(Scratch& scratch) const {
  auto& symbols = scratch.symbols;
  // The heap's top is the lowest rank, then the lowest position.
  auto& queue = scratch.queue;
  queue.clear();
  const auto later = [](const Scratch::QueuedMerge& a, const Scratch::QueuedMerge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const MergeTable::Merge* m = merges.find(symbols[i].id, symbols[i + 1].id))
      queue.push_back({m->rank, static_cast<std::uint32_t>(i), m->new_id});
  std::make_heap(queue.begin(), queue.end(), later);
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), later);
    const Scratch::QueuedMerge top = queue.back();
    queue.pop_back();
    Scratch::Symbol& current = symbols[top.pos];
    if (current.removed || current.next == -1) continue;
    const auto next_pos = static_cast<std::size_t>(current.next);
    const Scratch::Symbol right = symbols[next_pos];
    const MergeTable::Merge* still = merges.find(current.id, right.id);
    if (!still || still->new_id != top.new_id) continue;
    current.id = top.new_id;
    current.next = right.next;
    symbols[next_pos].removed = true;
    if (right.next >= 0 && static_cast<std::size_t>(right.next) < symbols.size())
      symbols[static_cast<std::size_t>(right.next)].prev = static_cast<std::int32_t>(top.pos);
    if (current.prev >= 0) {
      if (const MergeTable::Merge* m = merges.find(symbols[static_cast<std::size_t>(current.prev)].id, current.id)) {
        queue.push_back({m->rank, static_cast<std::uint32_t>(current.prev), m->new_id});
        std::push_heap(queue.begin(), queue.end(), later);
      }
    }
    if (current.next >= 0) {
      if (const MergeTable::Merge* m = merges.find(current.id, symbols[static_cast<std::size_t>(current.next)].id)) {
        queue.push_back({m->rank, top.pos, m->new_id});
        std::push_heap(queue.begin(), queue.end(), later);
      }
    }
  }
}

// One pre-token through the BPE model (BPE::tokenize): the per-thread word cache, then the
// whole-token shortcut under ignore_merges, then merge_word.
void Tokenizer::Impl::model(std::string_view word, Scratch& scratch, std::vector<std::uint32_t>& out) const {
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    if (scratch.cache_owner != serial || scratch.cache.size() >= kCacheMaxEntries ||
        scratch.cache_ids.size() >= kCacheMaxIds) {
      scratch.cache.clear();
      scratch.cache_ids.clear();
      scratch.cache_owner = serial;
    }
    if (const std::uint32_t* hit = scratch.cache.find(word)) {
      const auto first = scratch.cache_ids.begin() + static_cast<std::ptrdiff_t>(*hit >> kCacheCountBits);
      out.insert(out.end(), first, first + static_cast<std::ptrdiff_t>(*hit & kCacheCountMask));
      return;
    }
  }
  const std::size_t offset = scratch.cache_ids.size();
  std::size_t count = 0;
  auto emit = [&](std::uint32_t id) {
    out.push_back(id);
    if (cacheable) scratch.cache_ids.push_back(id);
    ++count;
  };
  const std::uint32_t* whole = ignore_merges ? vocab.find(word) : nullptr;
  if (whole) {
    emit(*whole);
  } else {
    merge_word(word, scratch);
    for (const Scratch::Symbol& symbol : scratch.symbols)
      if (!symbol.removed) emit(symbol.id);
  }
  if (cacheable) scratch.cache.set(word, static_cast<std::uint32_t>((offset << kCacheCountBits) | count));
}

void Tokenizer::Impl::encode_into(std::string_view text, std::vector<std::uint32_t>& out) const {
  if (const auto bad = invalid_utf8_offset(text))
    throw Error("tokenizer: the text is not valid UTF-8 at byte " + std::to_string(*bad));
  Scratch& scratch = thread_scratch();
  if (scratch.step_buffers.size() < pre_tokenizer.size()) scratch.step_buffers.resize(pre_tokenizer.size());
  split_added(text, raw_added, true, scratch, out, false);
}

// --- public interface -------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  impl->file = tokenizer_json.string();
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) throw Error(impl->file + ": cannot open");
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) throw Error(impl->file + ": cannot read");
  json root;
  try {
    root = json::parse(contents.str());
  } catch (const json::exception& e) {
    throw Error(impl->file + ": not valid JSON: " + e.what());
  }
  impl->parse(root);
  return Tokenizer(std::move(impl));
}

std::vector<std::uint32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<std::uint32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, ids);
  return ids;
}

std::vector<std::uint32_t> Tokenizer::encode_document(std::string_view text) const {
  std::vector<std::uint32_t> ids;
  ids.reserve(text.size() / 3 + 4 + impl_->prefix.size() + impl_->suffix.size());
  ids.assign(impl_->prefix.begin(), impl_->prefix.end());
  impl_->encode_into(text, ids);
  ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}

std::span<const std::uint32_t> Tokenizer::prefix() const { return impl_->prefix; }
std::span<const std::uint32_t> Tokenizer::suffix() const { return impl_->suffix; }
std::size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }
const std::string& Tokenizer::kind() const { return impl_->kind; }

}  // namespace dume
