"""tqdm-style progress lines on stderr for the daemon's streamed job replies."""
import os
import sys
import time


def enabled_by_default():
    """On when stderr is a terminal; LOUPE_PROGRESS=1 or 0 forces it either way."""
    forced = os.environ.get("LOUPE_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """`label:  40%|████      | 12/30 layers [00:01<00:02]`, redrawn in place."""

    width = 20

    def __init__(self, label, unit="layers", enabled=None, stream=None):
        self.label, self.unit = label, unit
        self.enabled = enabled_by_default() if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.drawn = False
        self.last = None

    def update(self, done, total):
        if not self.enabled or not total:
            return
        self.last = (done, total)
        elapsed = time.monotonic() - self.start
        fraction = min(1.0, done / total)
        filled = int(fraction * self.width)
        remaining = elapsed / done * (total - done) if done else 0.0
        line = (f"{self.label}: {int(fraction * 100):3d}%|{'█' * filled}{' ' * (self.width - filled)}| "
                f"{done}/{total} {self.unit} [{_clock(elapsed)}<{_clock(remaining)}]")
        self.stream.write("\r" + line)
        self.stream.flush()
        self.drawn = True

    def close(self):
        """Leaves the finished bar on its line, as tqdm does."""
        if self.drawn:
            if self.last and self.last[0] < self.last[1]:
                self.update(self.last[1], self.last[1])
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class Spinner:
    """A progress line for a job that reports no steps (loading a model): the time it has taken."""

    def __init__(self, label, enabled=None, stream=None):
        self.label = label
        self.enabled = enabled_by_default() if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.drawn = False
        self.state = "waiting"

    def tick(self, status=None):
        """Redraws with the job's latest status (`queued`, `running`); None keeps the last one."""
        if status in ("accepted", "queued", "running"):
            self.state = status
        if not self.enabled:
            return
        self.stream.write(f"\r{self.label}: {self.state} [{_clock(time.monotonic() - self.start)}]")
        self.stream.flush()
        self.drawn = True

    def close(self, summary=None):
        if not self.enabled:
            return
        if summary is not None:
            self.stream.write(f"\r{self.label}: {summary}\033[K\n")
        elif self.drawn:
            self.stream.write("\n")
        self.stream.flush()
        self.drawn = False
