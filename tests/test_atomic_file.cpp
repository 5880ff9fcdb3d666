// AtomicOutputFile (the destination appears whole on commit or not at all, write errors are
// reported with the system's reason and leave nothing), remove_stale_temporaries (temporaries
// of dead processes go, those of live ones stay), and ScratchFile (never visible by name).
//
// A full disk is simulated without privileges by RLIMIT_FSIZE: writes past the limit fail with
// EFBIG, as they would with ENOSPC. The fsync / rename order is checked from outside, on the
// real system calls, by tests/cli/test_cli_faults.py (strace).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "nibble/io/atomic_file.hpp"
#include "nibble/io/scratch_file.hpp"

#if NIBBLE_HAVE_POSIX_FILES
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

namespace {

namespace fs = std::filesystem;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::AtomicOutputFile;
using nibble::io::ScratchFile;

class AtomicFile : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    directory_ = fs::temp_directory_path() /
                 (std::string("nibble_test_atomic_file_") + test->name() + "_" +
                  std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(directory_, ignored);
  }

  std::string path_of(const std::string& name) const { return (directory_ / name).string(); }

  void write_text(const std::string& name, const std::string& text) const {
    std::ofstream out(path_of(name), std::ios::binary);
    out << text;
  }
  std::string read_text(const std::string& name) const {
    std::ifstream in(path_of(name), std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(directory_))
      out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path directory_;
};

void expect_error(const Error& error, ErrorCode code, const std::string& fragment) {
  EXPECT_EQ(error.code(), code) << error.what();
  EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
      << "message: " << error.what() << "\nexpected to contain: " << fragment;
}

TEST_F(AtomicFile, AppearsOnlyOnCommit) {
  const std::string path = path_of("out.bin");
  {
    AtomicOutputFile out(path);
    out.stream() << "partial";
    EXPECT_TRUE(fs::exists(out.temp_path()));
    EXPECT_NE(out.temp_path().find(".nibble-tmp-"), std::string::npos);
    EXPECT_FALSE(fs::exists(path));
  }  // not committed: an exception or an interrupt took this path
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(directory_)) << "the temporary was left behind";

  write_text("out.bin", "old");
  {
    AtomicOutputFile out(path);
    out.stream() << "new contents";
    EXPECT_EQ(read_text("out.bin"), "old") << "the destination changed before commit";
    out.commit();
    EXPECT_TRUE(out.committed());
  }
  EXPECT_EQ(read_text("out.bin"), "new contents");
  EXPECT_EQ(names(), std::vector<std::string>{"out.bin"});
}

TEST_F(AtomicFile, LargeAndSmallWritesArriveInOrder) {
  // Pieces below, at and above the 1 MiB buffer, so both the buffered and the direct path run.
  std::string expected;
  {
    AtomicOutputFile out(path_of("big.bin"));
    for (std::size_t size : {std::size_t{1}, std::size_t{1000}, std::size_t{1} << 20,
                             (std::size_t{1} << 20) + 7, std::size_t{3}, std::size_t{5} << 20}) {
      const std::string piece(size, static_cast<char>('a' + expected.size() % 26));
      out.stream().write(piece.data(), static_cast<std::streamsize>(piece.size()));
      expected += piece;
      EXPECT_EQ(static_cast<std::size_t>(out.stream().tellp()), expected.size());
    }
    out.commit();
  }
  EXPECT_EQ(read_text("big.bin"), expected);
}

TEST_F(AtomicFile, ReportsAnUnwritableDestination) {
  try {
    AtomicOutputFile out((directory_ / "no_such_dir" / "out.bin").string());
    FAIL() << "opened a file in a missing directory";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::io, "expected a writable directory");
    expect_error(error, ErrorCode::io, "No such file or directory");
  }
  try {
    AtomicOutputFile out(directory_.string());
    FAIL() << "opened a directory as the output";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::io, "it is a directory");
  }
  try {
    AtomicOutputFile out("");
    FAIL() << "accepted an empty path";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::invalid_argument, "output path is empty");
  }
}

TEST_F(AtomicFile, SeveralWritersOfOnePathGetDistinctTemporaries) {
  AtomicOutputFile first(path_of("x"));
  AtomicOutputFile second(path_of("x"));
  EXPECT_NE(first.temp_path(), second.temp_path());
  first.stream() << "first";
  second.stream() << "second";
  first.commit();
  second.commit();
  EXPECT_EQ(read_text("x"), "second");
}

#if NIBBLE_HAVE_POSIX_FILES

// Runs `body` with writes limited to `limit` bytes per file (EFBIG past it, SIGXFSZ ignored).
template <class Body>
void with_file_size_limit(rlim_t limit, const Body& body) {
  struct rlimit old_limit {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit new_limit = old_limit;
  new_limit.rlim_cur = limit;
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &new_limit), 0);
  body();
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::signal(SIGXFSZ, old_handler);
}

TEST_F(AtomicFile, AFailedWriteLeavesTheOldFileAndNoTemporary) {
  write_text("out.bin", "old contents");
  with_file_size_limit(1 << 20, [&] {
    try {
      AtomicOutputFile out(path_of("out.bin"));
      const std::string chunk(3 << 20, 'x');  // past the limit: a "full disk"
      out.stream().write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      out.commit();
      FAIL() << "commit succeeded past the file size limit";
    } catch (const Error& error) {
      expect_error(error, ErrorCode::io, "File too large");
      expect_error(error, ErrorCode::io, "nothing was written");
    }
  });
  EXPECT_EQ(read_text("out.bin"), "old contents");
  EXPECT_EQ(names(), std::vector<std::string>{"out.bin"});
}

TEST_F(AtomicFile, TheTemporaryIsLockedWhileItsWriterLives) {
  AtomicOutputFile out(path_of("locked.bin"));
  const int descriptor = ::open(out.temp_path().c_str(), O_RDONLY);
  ASSERT_GE(descriptor, 0);
  EXPECT_NE(::flock(descriptor, LOCK_EX | LOCK_NB), 0) << "the writer holds no lock";
  ::close(descriptor);
}

// A child process opens an AtomicOutputFile and dies without unwinding (as SIGKILL would).
std::string temporary_of_a_killed_writer(const std::string& path) {
  int pipe_ends[2];
  EXPECT_EQ(::pipe(pipe_ends), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_ends[0]);
    AtomicOutputFile* out = new AtomicOutputFile(path);  // never destroyed
    out->stream() << "half of a model";
    out->stream().flush();
    const std::string temp = out->temp_path();
    (void)!::write(pipe_ends[1], temp.data(), temp.size());
    ::_exit(0);
  }
  ::close(pipe_ends[1]);
  std::string temp;
  char buffer[4096];
  ::ssize_t got = 0;
  while ((got = ::read(pipe_ends[0], buffer, sizeof buffer)) > 0)
    temp.append(buffer, static_cast<std::size_t>(got));
  ::close(pipe_ends[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  return temp;
}

TEST_F(AtomicFile, StaleTemporariesOfDeadWritersAreRemoved) {
  const std::string dead = temporary_of_a_killed_writer(path_of("model.safetensors"));
  ASSERT_TRUE(fs::exists(dead)) << dead;
  AtomicOutputFile live(path_of("config.json"));  // this process's, locked: kept
  write_text("model.safetensors.nibble-tmp-notanumber-1", "not ours");  // not our name pattern
  write_text("notes.txt", "user data");
  fs::create_symlink(path_of("notes.txt"), path_of("link.nibble-tmp-999999-1"));

  const std::vector<std::string> removed =
      nibble::io::remove_stale_temporaries(directory_.string());
  EXPECT_EQ(removed, std::vector<std::string>{dead});
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live.temp_path()));
  EXPECT_TRUE(fs::exists(path_of("model.safetensors.nibble-tmp-notanumber-1")));
  EXPECT_TRUE(fs::is_symlink(path_of("link.nibble-tmp-999999-1"))) << "a symlink was removed";
  EXPECT_EQ(read_text("notes.txt"), "user data");
  live.commit();
  EXPECT_EQ(nibble::io::remove_stale_temporaries(directory_.string()), std::vector<std::string>{});
}

TEST_F(AtomicFile, AnUnlockedTemporaryOfALiveProcessIsKeptForAGracePeriod) {
  // This process is alive and the file is unlocked: the instant between create and lock.
  const std::string name =
      "out.bin" + std::string(nibble::io::kTemporaryMarker) + std::to_string(::getpid()) + "-77";
  write_text(name, "being created");
  EXPECT_TRUE(nibble::io::remove_stale_temporaries(directory_.string()).empty());
  EXPECT_TRUE(fs::exists(path_of(name)));
  // Once older than the grace period it cannot be a writer's (a reused pid).
  EXPECT_EQ(nibble::io::remove_stale_temporaries(directory_.string(), std::chrono::seconds(-1)),
            std::vector<std::string>{path_of(name)});
}

TEST_F(AtomicFile, ScratchFilesHaveNoName) {
  {
    ScratchFile scratch = ScratchFile::create(directory_.string());
    const std::string first = "first piece";
    const std::string second(3 << 20, 'z');
    EXPECT_EQ(scratch.append(first.data(), static_cast<int64_t>(first.size())), 0);
    EXPECT_EQ(scratch.append(second.data(), static_cast<int64_t>(second.size())),
              static_cast<int64_t>(first.size()));
    EXPECT_TRUE(fs::is_empty(directory_)) << "the scratch file is visible by name";
    std::string back(second.size(), '\0');
    scratch.read_at(static_cast<int64_t>(first.size()), back.data(),
                    static_cast<int64_t>(back.size()));
    EXPECT_EQ(back, second);
    try {
      scratch.read_at(scratch.size() - 2, back.data(), 3);
      FAIL() << "read past the end";
    } catch (const Error& error) {
      expect_error(error, ErrorCode::invalid_argument, "outside the");
    }
  }
  EXPECT_TRUE(fs::is_empty(directory_));
  try {
    (void)ScratchFile::create((directory_ / "missing").string());
    FAIL() << "made a scratch file in a missing directory";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::io, "cannot create a scratch file");
  }
}

TEST_F(AtomicFile, AScratchFileReportsAFullDisk) {
  ScratchFile scratch = ScratchFile::create(directory_.string());
  with_file_size_limit(1 << 20, [&] {
    const std::string chunk(2 << 20, 'y');
    try {
      scratch.append(chunk.data(), static_cast<int64_t>(chunk.size()));
      FAIL() << "append succeeded past the file size limit";
    } catch (const Error& error) {
      expect_error(error, ErrorCode::io, "File too large");
    }
  });
}

#endif  // NIBBLE_HAVE_POSIX_FILES

}  // namespace
