#pragma once
// Files the processes write for themselves: saved config snapshots, generated secrets.
#include <string>
#include <string_view>

namespace ag::files {

// Replaces `path` atomically with `content`: a temporary file beside it, mode 0600 (owner only,
// from its creation on), fsync, rename. False, with the old file kept and no temporary left
// behind, on any failure (e.g. a full disk or a directory that cannot be written); errno then
// holds the cause.
bool save_private_atomically(const std::string& path, const std::string& content);

// Writes all of `data` to `fd`, retrying short writes and EINTR. False on an error (errno set);
// part of `data` may then have been written.
bool write_all(int fd, std::string_view data);

}  // namespace ag::files
