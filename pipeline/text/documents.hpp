// Text corpora as users hold them: plain text files (a file, or a glob of files) and JSONL, read
// into documents for the tokenizer. Every file is untrusted: invalid UTF-8, empty documents and
// missing or non-string JSON fields are an Error naming file and line, or (on_bad = skip) a
// counted skip.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace dume {

enum class DocumentFormat { text, jsonl };
// text: one document per file, or per block of lines separated by blank lines.
enum class DocumentSplit { file, blank_line };
enum class OnBadDocument { error, skip };

struct DocumentSource {
  std::string path;  // a file, or a glob pattern (*, ?, [..] in the file name part) sorted by name
  DocumentFormat format = DocumentFormat::text;
  DocumentSplit split = DocumentSplit::file;  // text only
  std::string field = "text";                 // jsonl only: the string field holding the document
  OnBadDocument on_bad = OnBadDocument::error;
};

struct Documents {
  std::vector<std::string> texts;           // in file order, then order within the file
  std::vector<std::filesystem::path> files; // the files the pattern matched
  std::size_t skipped = 0;                  // bad documents skipped (on_bad = skip)
  std::string first_skip;                   // why the first one was skipped ("file:line: ...")
};

// The files a path or glob names, sorted; an Error when none match.
std::vector<std::filesystem::path> expand_glob(const std::string& pattern);

// Reads every document; throws Error ("FILE:LINE: what") on the first bad one unless on_bad = skip.
// No documents at all is an Error.
Documents read_documents(const DocumentSource& source);

}  // namespace dume
