// Text and JSONL documents. Line-split formats are streamed with getline(3), so a multi-GB file
// never sits in memory twice; only the documents themselves are kept.
#include "documents.hpp"

#include <glob.h>
#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>
#include <system_error>
#include <utility>

#include "error.hpp"
#include "utf8.hpp"

namespace dume {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail_file(const fs::path& path, const std::string& problem) {
  throw Error(path.string() + ": " + problem);
}

// A line of nothing but whitespace (a lone "\r" of a CRLF file included) separates blocks.
bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

// An open file read line by line; each line comes without its "\n" (a "\r" before it stays).
class LineReader {
 public:
  explicit LineReader(const fs::path& path) : path_(path), file_(std::fopen(path.c_str(), "rb")) {
    if (!file_) fail_file(path, std::string("cannot open: ") + std::strerror(errno));
  }
  ~LineReader() {
    std::free(buffer_);
    std::fclose(file_);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line, or false at the end of the file; a read error throws naming the file.
  bool next(std::string_view& line) {
    errno = 0;
    const ssize_t length = ::getline(&buffer_, &capacity_, file_);
    if (length < 0) {
      if (std::ferror(file_)) fail_file(path_, std::string("cannot read: ") + std::strerror(errno ? errno : EIO));
      return false;
    }
    ++number_;
    line = std::string_view(buffer_, static_cast<std::size_t>(length));
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    return true;
  }
  std::size_t number() const { return number_; }  // 1-based number of the last line returned

 private:
  fs::path path_;
  std::FILE* file_;
  char* buffer_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t number_ = 0;
};

// Collects documents and applies on_bad to the bad ones.
class Collector {
 public:
  Collector(Documents& out, OnBadDocument on_bad) : out_(out), on_bad_(on_bad) {}

  // `where` is "FILE:LINE" or "FILE".
  void bad(const std::string& where, const std::string& problem) {
    std::string message = where + ": " + problem;
    if (on_bad_ == OnBadDocument::error) throw Error(message);
    if (out_.skipped++ == 0) out_.first_skip = std::move(message);
  }

  // Checks a document (non-empty, valid UTF-8) and keeps it. `line` is where it starts (0: a
  // whole-file document, whose invalid byte is named by its offset in the file).
  void add(const fs::path& file, std::size_t line, std::string text) {
    if (text.empty()) return bad(file.string() + ":" + std::to_string(line == 0 ? 1 : line), "empty document");
    if (const auto offset = invalid_utf8_offset(text)) {
      if (line == 0) return bad(file.string(), "invalid UTF-8 at byte " + std::to_string(*offset));
      // Name the line holding the bad byte, and the byte within that line.
      const std::string_view before(text.data(), *offset);
      const std::size_t newline = before.rfind('\n');
      const std::size_t line_start = newline == std::string_view::npos ? 0 : newline + 1;
      const auto lines_before = static_cast<std::size_t>(std::count(before.begin(), before.end(), '\n'));
      return bad(file.string() + ":" + std::to_string(line + lines_before),
                 "invalid UTF-8 at byte " + std::to_string(*offset - line_start) + " of the line");
    }
    out_.texts.push_back(std::move(text));
  }

 private:
  Documents& out_;
  OnBadDocument on_bad_;
};

void read_whole_file(const fs::path& file, Collector& collector) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> stream(std::fopen(file.c_str(), "rb"), &std::fclose);
  if (!stream) fail_file(file, std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char chunk[1 << 16];
  std::size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, stream.get())) > 0) text.append(chunk, got);
  if (std::ferror(stream.get())) fail_file(file, std::string("cannot read: ") + std::strerror(errno ? errno : EIO));
  collector.add(file, 0, std::move(text));
}

void read_blocks(const fs::path& file, Collector& collector) {
  LineReader reader(file);
  std::string block;
  std::size_t block_line = 0;  // where the current block starts; 0 while between blocks
  std::string_view line;
  while (reader.next(line)) {
    if (is_blank(line)) {
      if (block_line != 0) collector.add(file, block_line, std::exchange(block, {}));
      block_line = 0;
      continue;
    }
    if (block_line == 0) {
      block_line = reader.number();
    } else {
      block += '\n';
    }
    block += line;
  }
  if (block_line != 0) collector.add(file, block_line, std::move(block));
}

void read_jsonl(const fs::path& file, const std::string& field, Collector& collector) {
  using nlohmann::json;
  LineReader reader(file);
  std::string_view line;
  while (reader.next(line)) {
    if (is_blank(line)) continue;
    const auto where = [&] { return file.string() + ":" + std::to_string(reader.number()); };
    // Checked first so the message names the byte rather than a JSON parse error.
    if (const auto offset = invalid_utf8_offset(line)) {
      collector.bad(where(), "invalid UTF-8 at byte " + std::to_string(*offset) + " of the line");
      continue;
    }
    json object;
    try {
      object = json::parse(line.begin(), line.end());
    } catch (const json::exception& e) {
      collector.bad(where(), std::string("invalid JSON: ") + e.what());
      continue;
    }
    if (!object.is_object()) {
      collector.bad(where(), std::string("a JSON ") + object.type_name() + ", not an object");
      continue;
    }
    const auto value = object.find(field);
    if (value == object.end()) {
      collector.bad(where(), "no field \"" + field + "\"");
      continue;
    }
    if (!value->is_string()) {
      collector.bad(where(), "field \"" + field + "\" is a " + value->type_name() + ", not a string");
      continue;
    }
    collector.add(file, reader.number(), value->get<std::string>());
  }
}

}  // namespace

std::vector<fs::path> expand_glob(const std::string& pattern) {
  // glob(3) reports the directory it could not read only through this callback.
  static thread_local std::string unreadable;
  static thread_local int unreadable_errno;
  unreadable.clear();
  unreadable_errno = 0;
  const auto on_error = [](const char* path, int error) {
    unreadable = path;
    unreadable_errno = error;
    return 1;  // stop, as GLOB_ERR asks
  };
  glob_t matches{};
  const int status = ::glob(pattern.c_str(), GLOB_ERR, on_error, &matches);
  std::vector<fs::path> files;
  if (status == 0)
    for (std::size_t i = 0; i < matches.gl_pathc; ++i) files.emplace_back(matches.gl_pathv[i]);
  ::globfree(&matches);
  if (status == GLOB_NOMATCH) throw Error("no file matches " + pattern);
  if (status == GLOB_ABORTED) {
    const std::string cause = unreadable + ": " + std::strerror(unreadable_errno);
    if (unreadable_errno == ENOENT) throw Error("no file matches " + pattern + " (" + cause + ")");
    throw Error(pattern + ": cannot read a directory while matching (" + cause + ")");
  }
  if (status != 0) throw Error(pattern + ": cannot match (out of memory)");
  // glob sorts by the locale's collation; byte order is the same everywhere.
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) { return a.native() < b.native(); });
  for (const fs::path& file : files) {
    std::error_code ec;
    if (fs::is_directory(file, ec)) fail_file(file, "is a directory, not a document file");
  }
  return files;
}

Documents read_documents(const DocumentSource& source) {
  Documents documents;
  documents.files = expand_glob(source.path);
  Collector collector(documents, source.on_bad);
  for (const fs::path& file : documents.files) {
    if (source.format == DocumentFormat::jsonl)
      read_jsonl(file, source.field, collector);
    else if (source.split == DocumentSplit::blank_line)
      read_blocks(file, collector);
    else
      read_whole_file(file, collector);
  }
  if (documents.texts.empty())
    throw Error(source.path + ": no documents" +
                (documents.skipped ? " (skipped " + std::to_string(documents.skipped) + " bad document(s); the first: " +
                                         documents.first_skip + ")"
                                   : std::string()));
  return documents;
}

}  // namespace dume
