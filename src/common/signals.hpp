#pragma once
// SIGINT/SIGTERM handling shared by every long-running command: the signals are blocked in all
// threads (call block_termination_signals() before starting any thread) and a watcher thread
// waits for them and runs `on_signal` once.
#include <csignal>
#include <functional>
#include <thread>

namespace ag {

inline sigset_t termination_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

inline void block_termination_signals() {
  sigset_t set = termination_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal)
      : thread_([f = std::move(on_signal)] {
          sigset_t set = termination_signals();
          int sig = 0;
          sigwait(&set, &sig);
          f(sig);
        }) {}
  // Wakes the watcher if no signal came (the command ended on its own); harmless otherwise.
  ~SignalWatcher() {
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  std::thread thread_;
};

}  // namespace ag
