import Foundation
import LoupeWire

/// The line `loupe load` keeps on stderr while the daemon loads a model, redrawn in place
/// ten times a second: a spinner, what the job is doing (queued behind other jobs, or
/// loading) and the seconds since the request, with layers done of total when the daemon
/// reports progress. Silent when stderr is not a terminal.
///
/// The daemon's replies arrive on the thread that waits in `WireClient.call`, the redraws
/// on a timer's queue: the state they share is behind a lock.
final class LoadProgress: @unchecked Sendable {
    private static let spinner = Array("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")

    private let label: String
    private let start = Date()
    private let lock = NSLock()
    private var state = "waiting for the daemon"
    private var layers: (done: Int, total: Int)?
    private var frame = 0
    private var drawn = false
    private var finished = false
    private let timer: DispatchSourceTimer?

    init(label: String, enabled: Bool = isatty(STDERR_FILENO) != 0) {
        self.label = label
        guard enabled else {
            timer = nil
            return
        }
        let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        self.timer = timer
        timer.schedule(deadline: .now() + .milliseconds(100), repeating: .milliseconds(100))
        timer.setEventHandler { [weak self] in self?.redraw() }
        timer.resume()
    }

    /// Takes one interim reply of the job (`accepted`, `queued`, `running`, `progress`).
    func update(_ reply: MessageValue) {
        lock.withLock {
            switch reply["status"]?.stringValue {
            case "queued": state = "queued behind other jobs (position \(reply["position"]?.intValue ?? 0))"
            case "running": state = "loading"
            case "progress":
                state = "loading"
                if let done = reply["done"]?.intValue, let total = reply["total"]?.intValue, total > 0 {
                    layers = (done, total)
                }
            default: break
            }
        }
    }

    /// Stops the redraws and clears the line.
    func finish() {
        timer?.cancel()
        lock.withLock {
            finished = true
            if drawn { FileHandle.standardError.write("\r\u{1B}[K") }
            drawn = false
        }
    }

    private func redraw() {
        lock.withLock {
            guard !finished else { return }
            frame += 1
            var line = "\r\(Self.spinner[frame % Self.spinner.count]) \(label): \(state)"
            if let layers { line += " \(layers.done)/\(layers.total) layers" }
            line += String(format: " %.1fs", Date().timeIntervalSince(start))
            FileHandle.standardError.write(line + "\u{1B}[K")
            drawn = true
        }
    }

    deinit { timer?.cancel() }
}
